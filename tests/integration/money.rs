//! Money counted right against servers that lie (issue 10, parts 3 and 5):
//! hostile usage and costs in every API shape never bend a budget or poison
//! the journal's totals, and answers withheld by the provider are failed
//! calls, never cached.

use fake_llm::{FakeServer, Hostile, Reply};
use serde_json::{Value, json};

use crate::support::{Project, policy, report, step, tollgate_in, transcript};

/// Ten items through the budget model (gpt-4.1-nano, $0.40 per Mtok out):
/// each call's worst case and honest cost is about $0.008 (20,000 output
/// tokens), so a $0.01 run budget pays for one of them.
const TEN: &str = r#"version: 1
name: ten
inputs:
  items: { type: array, default: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10] }
steps:
  each: { task: summarize, for_each: inputs.items, prompt: "item {{ item }}", max_output_tokens: 20000 }
"#;

fn openrouter(fake: &FakeServer, extra: &str) -> String {
    policy(fake, extra).replace("kind: openai, base_url", "kind: openrouter, base_url")
}

fn report_text(p: &Project) -> String {
    let out = tollgate_in(p.path(), &["report"]);
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negative_reported_cost_does_not_free_the_budget() {
    let fake = FakeServer::start().await;
    fake.set_default(
        Reply::text("ok")
            .usage(20, 20_000)
            .hostile(Hostile::default().cost(json!(-1.0))),
    );
    let p = Project::new(&openrouter(&fake, "budgets:\n  run_usd: 0.01\n"), TEN);
    let out = p.run(&["--format", "json"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    // Before: each answer's cost of -$1 freed budget, and all ten were made.
    assert_eq!(
        fake.request_count(),
        1,
        "a budget for one call paid for more"
    );
    let r = report(&out);
    let cost = r["cost_usd"].as_f64().unwrap();
    assert!(cost > 0.0 && cost <= 0.01, "{cost}");
    // The call is journaled with its flag, and the report says so.
    let text = report_text(&p);
    assert!(
        text.contains("warning: 1 call reported usage or a cost that was not believed"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_reported_cost_does_not_poison_the_totals() {
    let fake = FakeServer::start().await;
    fake.set_default(
        Reply::text("ok")
            .usage(20, 5)
            .hostile(Hostile::default().cost(json!(1e12))),
    );
    let wf = "version: 1\nname: one\nsteps:\n  a: { task: summarize, prompt: hi, max_output_tokens: 10 }\n";
    let p = Project::new(&openrouter(&fake, "budgets:\n  daily_usd: 1.00\n"), wf);
    for _ in 0..2 {
        let out = p.run(&["--format", "json", "--no-cache"]).await;
        assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
        let cost = report(&out)["cost_usd"].as_f64().unwrap();
        assert!(cost < 1e-4, "{cost}");
    }
    // The day's total still has room: the second run was not refused.
    assert_eq!(fake.request_count(), 2);
    let json = tollgate_in(p.path(), &["report", "--format", "json"]);
    let v: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert!(v["totals"]["cost_usd"].as_f64().unwrap() < 1e-3, "{v}");
    assert_eq!(v["totals"]["untrusted_calls"], 2, "{v}");
}

/// Every hostile count, in every API shape (chat, Anthropic, Gemini; whole
/// answers and streams): the run finishes, each call is charged at most its
/// worst case (about $0.0016 for these steps) and at least its prompt, and
/// the report flags it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_token_counts_are_never_trusted_in_any_api_shape() {
    let fake = FakeServer::start().await;
    let wf = r#"version: 1
name: shapes
steps:
  chat: { task: summarize, prompt: "summarize this", max_output_tokens: 100 }
  messages: { task: write, prompt: "write this", max_output_tokens: 100 }
  gemini: { task: write, model: flagship, prompt: "think about this", max_output_tokens: 100 }
"#;
    let hostile = [
        Hostile::default().output(json!(u64::MAX)),
        Hostile::default()
            .input(json!(u64::MAX))
            .output(json!(u64::MAX)),
        Hostile::default().output(json!(1e300)).input(json!(-5)),
        Hostile::default().output(json!(5_000_000)),
        Hostile::default().output(json!("NaN")).input(json!(-1)),
    ];
    let p = Project::new(&policy(&fake, ""), wf);
    let mut untrusted_runs = 0;
    for (n, h) in hostile.into_iter().enumerate() {
        for stream in [true, false] {
            fake.set_default(Reply::text("fine answer").usage(10, 3).hostile(h.clone()));
            let mut args = vec!["--format", "json", "--no-cache"];
            if !stream {
                args.push("--no-stream");
            }
            let out = p.run(&args).await;
            assert_eq!(out.status.code(), Some(0), "case {n}: {}", transcript(&out));
            let r = report(&out);
            for id in ["chat", "messages", "gemini"] {
                let s = step(&r, id);
                let cost = s["cost_usd"].as_f64().unwrap();
                // Worst cases: nano 100×0.4; sonnet 100×15; gemini-2.5-pro
                // 100×10 µ$, plus a few prompt tokens.
                assert!(
                    cost > 0.0 && cost < 0.0016,
                    "case {n} {id} stream={stream}: {cost} {s}"
                );
                let calls = s["calls"].as_array().unwrap();
                let out_tokens = calls[0]["usage"]["output_tokens"].as_u64().unwrap();
                assert!(out_tokens <= 216, "case {n} {id}: {out_tokens}");
            }
            untrusted_runs += 1;
        }
    }
    let json = tollgate_in(p.path(), &["report", "--format", "json"]);
    let v: Value = serde_json::from_slice(&json.stdout).unwrap();
    let total = v["totals"]["cost_usd"].as_f64().unwrap();
    assert!(total < 0.0016 * 3.0 * untrusted_runs as f64, "{total}");
    // Cases 0, 1 and 3 are absurd in every shape; 2 and 4 are unreadable
    // counts, which read as nothing reported (then counted by tollgate).
    let untrusted = v["totals"]["untrusted_calls"].as_u64().unwrap_or(0);
    assert!(untrusted >= 3 * 3 * 2, "{untrusted} {v}");
    let text = report_text(&p);
    assert!(text.contains("not believed"), "{text}");
}

/// Batch results carry the same lies; they are judged in the same place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_usage_in_batch_results_is_never_trusted() {
    let fake = FakeServer::start().await;
    fake.set_default(
        Reply::text("bug").usage(20, 1).hostile(
            Hostile::default()
                .output(json!(u64::MAX))
                .input(json!(u64::MAX)),
        ),
    );
    let wf = r#"version: 1
name: labels
inputs:
  tickets: { type: array, default: ["App crashes on save", "Please add dark mode"] }
steps:
  label: { task: classify, latency: batch, for_each: inputs.tickets, prompt: "Label: {{ item }}", max_output_tokens: 5 }
  sorted: { task: write, latency: batch, for_each: inputs.tickets, prompt: "Sort: {{ item }}", max_output_tokens: 5 }
"#;
    let p = Project::new(&policy(&fake, ""), wf);
    let out = p
        .run(&["--format", "json", "--batch-poll-interval", "10ms"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    assert!(fake.batches_created() >= 2, "both batch APIs were used");
    let r = report(&out);
    for id in ["label", "sorted"] {
        for call in step(&r, id)["calls"].as_array().unwrap() {
            assert_eq!(call["batch"], true, "{call}");
            let cost = call["cost_usd"].as_f64().unwrap();
            // Worst case at batch prices: a few input tokens and 5 out.
            assert!(cost > 0.0 && cost < 1e-4, "{id}: {call}");
        }
    }
    let json = tollgate_in(p.path(), &["report", "--format", "json"]);
    let v: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["totals"]["untrusted_calls"], 4, "{v}");
}

/// An answer the provider withheld (no content, a non-normal finish) is a
/// failed call in every shape, whole or streamed — and never cached: the
/// second run asks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withheld_answer_is_a_failed_call_never_cached() {
    for (alias, finish, wf_step) in [
        (
            "flagship",
            "SAFETY",
            "{ task: write, reasoning: deep, prompt: hi, max_output_tokens: 10 }",
        ),
        (
            "flagship",
            "PROHIBITED_CONTENT",
            "{ task: write, reasoning: deep, prompt: hi, max_output_tokens: 10 }",
        ),
        (
            "budget",
            "content_filter",
            "{ task: summarize, prompt: hi, max_output_tokens: 10 }",
        ),
        (
            "workhorse",
            "refusal",
            "{ task: write, prompt: hi, max_output_tokens: 10 }",
        ),
    ] {
        for stream in [true, false] {
            let fake = FakeServer::start().await;
            fake.set_default(
                Reply::text("")
                    .usage(10, 0)
                    .hostile(Hostile::default().finish(finish)),
            );
            let wf = format!("version: 1\nname: one\nsteps:\n  a: {wf_step}\n");
            let p = Project::new(&policy(&fake, ""), &wf);
            let mut args = vec!["--format", "json"];
            if !stream {
                args.push("--no-stream");
            }
            for run in 1..=2 {
                let out = p.run(&args).await;
                assert_eq!(
                    out.status.code(),
                    Some(1),
                    "{alias} {finish}: {}",
                    transcript(&out)
                );
                let r = report(&out);
                let a = step(&r, "a");
                assert_eq!(a["status"], "failed", "{a}");
                assert!(a["detail"].as_str().unwrap().contains(finish), "{a}");
                assert_eq!(
                    fake.request_count(),
                    run,
                    "{alias} {finish}: served from the cache"
                );
            }
        }
    }
}

/// `plan` prices a prompt above gemini-2.5-pro's 200k threshold at the
/// long-context rates ($2.50 in / $15 out per Mtok instead of $1.25 / $10),
/// the whole request; a step's calls are tiered one by one, never by their sum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_prices_long_prompts_at_the_long_context_tier() {
    let fake = FakeServer::start().await;
    let pol = policy(&fake, "");
    let plan = |words: usize, items: usize| -> (f64, f64, u64) {
        let wf = format!(
            "version: 1\nname: long\ninputs:\n  items: {{ type: array, default: {:?} }}\nsteps:\n  a: {{ task: debug, model: flagship, for_each: inputs.items, prompt: \"{{{{ item }}}} {}\", max_output_tokens: 1000 }}\n",
            (0..items).collect::<Vec<_>>(),
            "word ".repeat(words)
        );
        let dir = Project::new(&pol, &wf);
        let out = tollgate_in(
            dir.path(),
            &[
                "plan",
                "wf.yaml",
                "--policy",
                "policy.yaml",
                "--format",
                "json",
            ],
        );
        assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let a = &v["steps"][0];
        assert_eq!(a["model"]["alias"], "flagship", "{a}");
        (
            a["cost"]["high"].as_f64().unwrap(),
            a["cost"]["low"].as_f64().unwrap(),
            a["tokens"]["input_worst"].as_u64().unwrap(),
        )
    };
    // One call below the threshold, one above.
    let (below, _, n_below) = plan(100_000, 1);
    let (above, _, n_above) = plan(300_000, 1);
    assert!(
        n_below < 200_000 && n_above > 200_000,
        "{n_below} {n_above}"
    );
    let want = |n: u64, input: f64, output: f64| (n as f64 * input + 1000.0 * output) / 1e6;
    assert!((below - want(n_below, 1.25, 10.0)).abs() < 1e-9, "{below}");
    assert!((above - want(n_above, 2.5, 15.0)).abs() < 1e-9, "{above}");
    // Three calls below 200k each, above it in all: every call at the base rates.
    let (three, _, n_three) = plan(70_000, 3);
    assert!(n_three > 200_000, "{n_three}");
    assert!(
        (three - (n_three as f64 * 1.25 + 3000.0 * 10.0) / 1e6).abs() < 1e-9,
        "{three}"
    );
}

/// Mistral reports cache hits as `usage.num_cached_tokens`: they are cached
/// input, billed at the cache-read price (gpt-4.1-nano's prices here:
/// $0.10 in, $0.025 cached, $0.40 out per Mtok).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mistral_cached_tokens_are_billed_as_cache_reads() {
    let fake = FakeServer::start().await;
    fake.set_default(Reply::raw(
        200,
        "application/json",
        json!({"id": "cmpl-1", "object": "chat.completion", "model": "gpt-4.1-nano",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "bug"},
                "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1500, "completion_tokens": 10, "total_tokens": 1510,
                "num_cached_tokens": 1024}})
        .to_string(),
    ));
    let pol = policy(&fake, "")
        .replace("kind: openai, base_url", "kind: mistral, base_url")
        .replace(
            "model: gpt-4.1-nano, tier: budget",
            "model: gpt-4.1-nano, catalog: gpt-4.1-nano, tier: budget",
        );
    let wf = format!(
        "version: 1\nname: one\nsteps:\n  a: {{ task: classify, prompt: \"bug? {}\", max_output_tokens: 10 }}\n",
        "word ".repeat(1400)
    );
    let p = Project::new(&pol, &wf);
    let out = p.run(&["--format", "json", "--no-stream"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let r = report(&out);
    assert_eq!(r["cached_input_tokens"], 1024, "{r}");
    let cost = step(&r, "a")["cost_usd"].as_f64().unwrap();
    let want = (476.0 * 0.1 + 1024.0 * 0.025 + 10.0 * 0.4) / 1e6;
    assert!((cost - want).abs() < 1e-12, "{cost} vs {want}");
}

/// Anthropic's `usage.output_tokens_details.thinking_tokens` is the
/// reasoning part of the output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_thinking_tokens_are_reasoning_tokens() {
    let fake = FakeServer::start().await;
    fake.set_default(Reply::raw(
        200,
        "application/json",
        json!({"id": "msg_1", "type": "message", "role": "assistant",
            "model": "claude-sonnet-4-6",
            "content": [{"type": "thinking", "thinking": "hmm", "signature": "s"},
                        {"type": "text", "text": "done"}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 12, "output_tokens": 90, "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0, "output_tokens_details": {"thinking_tokens": 70}}})
        .to_string(),
    ));
    let wf =
        "version: 1\nname: one\nsteps:\n  a: { task: write, prompt: hi, max_output_tokens: 100 }\n";
    let p = Project::new(&policy(&fake, ""), wf);
    let out = p.run(&["--format", "json", "--no-stream"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let r = report(&out);
    let usage = &step(&r, "a")["calls"][0]["usage"];
    assert_eq!(usage["reasoning_tokens"], 70, "{usage}");
    assert_eq!(usage["output_tokens"], 90, "{usage}");
}

/// A Gemini answer stopped part way by its safety filter keeps what it
/// said, but is never cached: the next identical request asks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partly_filtered_answer_is_never_cached() {
    for stream in [true, false] {
        let fake = FakeServer::start().await;
        fake.set_default(
            Reply::text("the first half")
                .usage(10, 3)
                .hostile(Hostile::default().finish("SAFETY")),
        );
        let wf = "version: 1\nname: one\nsteps:\n  a: { task: write, reasoning: deep, prompt: hi, max_output_tokens: 10 }\n";
        let p = Project::new(&policy(&fake, ""), wf);
        let mut args = vec!["--format", "json"];
        if !stream {
            args.push("--no-stream");
        }
        for run in 1..=2 {
            let out = p.run(&args).await;
            assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
            assert_eq!(
                fake.request_count(),
                run,
                "stream={stream}: served from the cache"
            );
        }
    }
}

/// An OpenAI refusal (`content: null, refusal: "…"`, finish reason `stop`)
/// is withheld text, not an empty answer: a failed call, never cached — in
/// a whole answer and in a stream (the refusal arrives in `delta.refusal`).
#[tokio::test]
async fn an_openai_refusal_is_a_failed_call_never_cached() {
    let whole = r#"{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":null,"refusal":"I can't help with that."},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":6,"total_tokens":16}}"#;
    let stream = concat!(
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null,\"refusal\":\"\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"refusal\":\"I can't help with that.\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        "data: [DONE]\n\n"
    );
    for (content_type, body, args) in [
        (
            "application/json",
            whole,
            vec!["--format", "json", "--no-stream"],
        ),
        ("text/event-stream", stream, vec!["--format", "json"]),
    ] {
        let fake = FakeServer::start().await;
        fake.set_default(Reply::raw(200, content_type, body));
        // `summarize` goes to `budget`, an OpenAI model in this policy.
        let wf = "version: 1\nname: one\nsteps:\n  a: { task: summarize, prompt: hi, max_output_tokens: 10 }\n";
        let p = Project::new(&policy(&fake, ""), wf);
        for run in 1..=2 {
            let out = p.run(&args).await;
            assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
            let r = report(&out);
            let a = step(&r, "a");
            assert_eq!(a["status"], "failed", "{a}");
            assert!(a["detail"].as_str().unwrap().contains("refusal"), "{a}");
            assert_eq!(fake.request_count(), run, "served from the cache");
        }
    }
}

/// A server that answers in full but reports (almost) no output tokens: the
/// answer's own text is what was generated, so the charge counts at least
/// its tokens, and a budget that pays for one full answer does not pay for
/// ten of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_longer_than_its_reported_usage_is_charged_for_its_text() {
    let fake = FakeServer::start().await;
    // About 18,000 tokens of text ("word " is one o200k token), reported as 1.
    let long = "word ".repeat(18_000);
    fake.set_default(Reply::text(long).usage(20, 1));
    let p = Project::new(&policy(&fake, "budgets:\n  run_usd: 0.01\n"), TEN);
    let out = p.run(&["--format", "json", "--no-stream"]).await;
    let r = report(&out);
    let cost = r["cost_usd"].as_f64().unwrap();
    assert!(
        fake.request_count() <= 2,
        "a budget for one answer paid for {} (charged ${cost})",
        fake.request_count()
    );
    assert!(cost >= 0.007, "{cost}");
}
