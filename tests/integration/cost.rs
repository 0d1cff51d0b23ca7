//! Prompt caching end to end: what the executor asks Anthropic to cache,
//! and how cache writes and reads are priced and reported.

use fake_llm::{FakeServer, Reply};
use serde_json::{Value, json};

use crate::support::{Project, policy, report, step, transcript};

/// Three steps in a chain share one long system prompt (about 2,800
/// tokens); a fourth has a short one.
const SHARED_PREFIX: &str = r#"version: 1
name: cached
steps:
  first:
    task: write
    system: "{% for i in range(200) %}Rule {{ i }}: answer precisely and cite the section you rely on. {% endfor %}"
    prompt: "What does rule 7 say?"
  second:
    task: write
    needs: [first]
    system: "{% for i in range(200) %}Rule {{ i }}: answer precisely and cite the section you rely on. {% endfor %}"
    prompt: "What does rule 8 say?"
  third:
    task: write
    needs: [second]
    system: "{% for i in range(200) %}Rule {{ i }}: answer precisely and cite the section you rely on. {% endfor %}"
    prompt: "What does rule 9 say?"
  short:
    task: write
    system: "Be brief."
    prompt: "Say hi."
"#;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_caches_a_long_system_prompt_and_prices_writes_and_reads() {
    let fake = FakeServer::start().await;
    // The fake plays Anthropic's cache: the first request with a breakpoint
    // writes the 2,000-token prefix, later ones read it.
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen_h = seen.clone();
    fake.set_handler(move |r| {
        let marked = r.body["system"].is_array();
        if !marked {
            return Reply::text("hi").usage(20, 5);
        }
        if seen_h.swap(true, std::sync::atomic::Ordering::SeqCst) {
            Reply::text("ok").usage(2100, 5).cached(2000)
        } else {
            Reply::text("ok").usage(2100, 5).cache_write(2000)
        }
    });
    let policy = policy(&fake, "").replace(
        "api_key_env: TEST_ANTHROPIC_KEY }",
        "api_key_env: TEST_ANTHROPIC_KEY, prompt_cache: { ttl: 1h } }",
    );
    let p = Project::new(&policy, SHARED_PREFIX);
    let out = p.run(&["--format", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let r = report(&out);

    // Only the long prefix carries the breakpoint, with the policy's TTL.
    for req in fake.requests() {
        let system = &req.body["system"];
        if system.is_array() {
            assert_eq!(
                system[0]["cache_control"],
                json!({"type": "ephemeral", "ttl": "1h"})
            );
            assert!(system[0]["text"].as_str().unwrap().starts_with("Rule 0:"));
        } else {
            assert_eq!(system, &Value::String("Be brief.".into()), "{system}");
        }
    }
    assert_eq!(
        fake.requests()
            .iter()
            .filter(|r| r.body["system"].is_array())
            .count(),
        3
    );

    // claude-sonnet-4-6: $3 in, $15 out, $0.30 cache read, $6 1 h write per Mtok.
    let first = step(&r, "first");
    assert_eq!(first["usage"]["cache_write_tokens"], 2000);
    assert_eq!(first["usage"]["cache_write_1h_tokens"], 2000);
    let write_cost = (100.0 * 3.0 + 2000.0 * 6.0 + 5.0 * 15.0) / 1e6;
    assert!(
        close(first["cost_usd"].as_f64().unwrap(), write_cost),
        "{first}"
    );
    let read_cost = (100.0 * 3.0 + 2000.0 * 0.3 + 5.0 * 15.0) / 1e6;
    for id in ["second", "third"] {
        let s = step(&r, id);
        assert_eq!(s["usage"]["cached_input_tokens"], 2000, "{s}");
        assert!(close(s["cost_usd"].as_f64().unwrap(), read_cost), "{s}");
    }
    // The run reports the cached tokens and what they saved against list
    // price (every input token at $3).
    assert_eq!(r["cached_input_tokens"], 4000);
    let short_cost = (20.0 * 3.0 + 5.0 * 15.0) / 1e6;
    let list = 3.0 * (2100.0 * 3.0 + 5.0 * 15.0) / 1e6 + short_cost;
    assert!(close(r["list_cost_usd"].as_f64().unwrap(), list), "{r}");
    let spent = write_cost + 2.0 * read_cost + short_cost;
    assert!(close(r["cost_usd"].as_f64().unwrap(), spent), "{r}");
    assert!(
        close(r["saving_usd"].as_f64().unwrap(), list - spent),
        "{r}"
    );

    // And the text summary says so (a fresh prompt cache for the second
    // run, and past the response cache, which would answer it all).
    seen.store(false, std::sync::atomic::Ordering::SeqCst);
    let out = p.run(&["--no-cache"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("4000 input tokens read from prompt caches, 2000 written; saved $0.0048"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_prompt_cache_in_the_policy_nothing_is_marked() {
    let fake = FakeServer::start().await;
    fake.set_default(Reply::text("ok").usage(2100, 5));
    let p = Project::new(&policy(&fake, ""), SHARED_PREFIX);
    let out = p.run(&["--format", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    for req in fake.requests() {
        assert!(req.body["system"].is_string(), "{}", req.body["system"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_and_gemini_cached_tokens_are_billed_at_the_cache_read_price() {
    let fake = FakeServer::start().await;
    fake.set_handler(|r| match r.model().as_str() {
        "gpt-4.1-nano" => Reply::text("bug").usage(1500, 10).cached(1024),
        "gemini-2.5-pro" => Reply::text("a plan").usage(4000, 100).cached(3000),
        other => Reply::text(format!("unexpected {other}")),
    });
    // Prompts about as long as the usage reported (a usage far above the
    // counted prompt is not believed: see money::).
    let wf = format!(
        r#"version: 1
name: auto-cache
steps:
  label: {{ task: classify, prompt: "bug or not? {}" }}
  plan: {{ task: debug, reasoning: deep, prompt: "Plan the fix. {}" }}
"#,
        "word ".repeat(1400),
        "word ".repeat(3500)
    );
    let p = Project::new(&policy(&fake, ""), &wf);
    let out = p.run(&["--format", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let r = report(&out);
    // gpt-4.1-nano: $0.10 in, $0.025 cached, $0.40 out per Mtok.
    let label = step(&r, "label")["cost_usd"].as_f64().unwrap();
    assert!(
        close(label, (476.0 * 0.1 + 1024.0 * 0.025 + 10.0 * 0.4) / 1e6),
        "{label}"
    );
    // gemini-2.5-pro: $1.25 in, $0.125 cached, $10 out per Mtok.
    let plan = step(&r, "plan")["cost_usd"].as_f64().unwrap();
    assert!(
        close(plan, (1000.0 * 1.25 + 3000.0 * 0.125 + 100.0 * 10.0) / 1e6),
        "{plan}"
    );
    assert_eq!(r["cached_input_tokens"], 4024);
    let saved = (1024.0 * (0.1 - 0.025) + 3000.0 * (1.25 - 0.125)) / 1e6;
    assert!(close(r["saving_usd"].as_f64().unwrap(), saved), "{r}");
}
