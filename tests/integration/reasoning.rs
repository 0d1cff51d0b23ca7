//! A step's `reasoning:` level as each provider's knob, end to end: the
//! binary runs a workflow against the fake and the test reads the exact
//! JSON each provider received; the plan prices the thinking budget and says
//! when a model gets nothing.

use serde_json::{Value, json};

use crate::support::*;

const LEVELS: [&str; 4] = ["none", "light", "standard", "deep"];

/// One model per dialect that the catalog marks `supports_reasoning`, and
/// one it does not (`gpt-4.1-nano`).
fn reasoning_policy(base: &str) -> String {
    format!(
        r#"version: 1
name: knobs
providers:
  openai:    {{ kind: openai, base_url: "{base}/v1", api_key_env: TEST_OPENAI_KEY, allow_insecure: true }}
  anthropic: {{ kind: anthropic, base_url: "{base}", api_key_env: TEST_ANTHROPIC_KEY, allow_insecure: true }}
  gemini:    {{ kind: gemini, base_url: "{base}/v1beta", api_key_env: TEST_GEMINI_KEY, allow_insecure: true }}
models:
  gpt:    {{ provider: openai, model: gpt-5-mini, tier: workhorse }}
  claude: {{ provider: anthropic, model: claude-sonnet-4-6, tier: workhorse }}
  gem:    {{ provider: gemini, model: gemini-2.5-flash, tier: workhorse }}
  nano:   {{ provider: openai, model: gpt-4.1-nano, tier: budget }}
rules:
  - {{ name: rest, use: nano }}
"#
    )
}

/// A step per model and level, each with its own prompt (`<model>-<level>`)
/// so the test can find its request.
fn workflow() -> String {
    let mut w = String::from("version: 1\nname: knobs\nsteps:\n");
    for model in ["gpt", "claude", "gem"] {
        for level in LEVELS {
            w.push_str(&format!(
                "  {model}_{level}: {{ task: debug, prompt: '{model}-{level}', reasoning: {level}, model: {model}, max_output_tokens: 100, temperature: 0.5 }}\n"
            ));
        }
    }
    w.push_str("  nano_deep: { task: debug, prompt: 'nano-deep', reasoning: deep, model: nano, max_output_tokens: 100 }\n");
    w
}

fn sent<'a>(requests: &'a [fake_llm::Recorded], prompt: &str) -> &'a Value {
    let quoted = format!("\"{prompt}\"");
    &requests
        .iter()
        .find(|r| r.raw_body.contains(&quoted))
        .unwrap_or_else(|| panic!("no request for {prompt}"))
        .body
}

#[tokio::test]
async fn each_level_is_sent_as_each_providers_knob() {
    let fake = fake_llm::FakeServer::start().await;
    fake.set_default(fake_llm::Reply::text("ok").usage(12, 3));
    let project = Project::new(&reasoning_policy(&fake.base_url()), &workflow());
    let out = project.run(&["--format", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let requests = fake.requests();

    // OpenAI: `reasoning_effort`, the budget added to the output limit.
    for (level, effort, limit) in [
        ("none", Some("minimal"), 100),
        ("light", Some("low"), 1124),
        ("standard", None, 100),
        ("deep", Some("high"), 16484),
    ] {
        let body = sent(&requests, &format!("gpt-{level}"));
        assert_eq!(
            body.get("reasoning_effort").and_then(Value::as_str),
            effort,
            "{level}"
        );
        assert_eq!(body["max_completion_tokens"], limit, "{level}");
        assert_eq!(body["temperature"], 0.5, "{level}");
    }

    // Anthropic: thinking with a budget below `max_tokens`; no temperature
    // while thinking; `none` is the default (off) and sends nothing.
    for (level, thinking, max_tokens) in [
        ("none", None, 100),
        (
            "light",
            Some(json!({"type": "enabled", "budget_tokens": 1024})),
            1124,
        ),
        ("standard", None, 100),
        (
            "deep",
            Some(json!({"type": "enabled", "budget_tokens": 16384})),
            16484,
        ),
    ] {
        let body = sent(&requests, &format!("claude-{level}"));
        assert_eq!(body.get("thinking").cloned(), thinking, "{level}");
        assert_eq!(body["max_tokens"], max_tokens, "{level}");
        let thinks = body.get("thinking").is_some();
        assert_eq!(body.get("temperature").is_none(), thinks, "{level}");
        if let Some(budget) = body.pointer("/thinking/budget_tokens") {
            assert!(budget.as_u64() < body["max_tokens"].as_u64());
        }
    }

    // Gemini: `generationConfig.thinkingConfig.thinkingBudget`, 0 for none.
    for (level, budget, limit) in [
        ("none", Some(0), 100),
        ("light", Some(1024), 1124),
        ("standard", None, 100),
        ("deep", Some(16384), 16484),
    ] {
        let config = &sent(&requests, &format!("gem-{level}"))["generationConfig"];
        assert_eq!(
            config
                .pointer("/thinkingConfig/thinkingBudget")
                .and_then(Value::as_u64),
            budget,
            "{level}"
        );
        if budget.is_some() {
            assert_eq!(config["thinkingConfig"].as_object().unwrap().len(), 1);
        }
        assert_eq!(config["maxOutputTokens"], limit, "{level}");
    }

    // A model without reasoning support gets nothing.
    let nano = sent(&requests, "nano-deep");
    assert!(nano.get("reasoning_effort").is_none(), "{nano}");
    assert_eq!(nano["max_completion_tokens"], 100);
    assert_no_key(&out, "");
}

#[test]
fn the_plan_prices_the_budget_and_says_when_nothing_is_sent() {
    let project = Project::new(&reasoning_policy("http://127.0.0.1:9"), &workflow());
    let out = project
        .tollgate(&["plan", "wf.yaml", "--policy", "policy.yaml"])
        .output();
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let text = stdout(&out);
    assert!(
        text.contains(
            "reasoning    deep: reasoning not supported by `nano` (gpt-4.1-nano); nothing sent"
        ),
        "{text}"
    );
    assert!(
        text.contains("reasoning    deep: thinking: {type: enabled, budget_tokens: 16384}"),
        "{text}"
    );
    assert!(
        text.contains("reasoning    none: thinkingConfig.thinkingBudget: 0"),
        "{text}"
    );

    let out = project
        .tollgate(&[
            "plan",
            "wf.yaml",
            "--policy",
            "policy.yaml",
            "--format",
            "json",
        ])
        .output();
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let plan: Value = serde_json::from_slice(&out.stdout).expect("JSON plan");
    let step = |id: &str| {
        plan["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .unwrap_or_else(|| panic!("no step {id}"))
            .clone()
    };
    // Thinking is billed as output: the worst case holds the whole budget,
    // and the expected output counts it as spent.
    let deep = step("claude_deep");
    assert_eq!(deep["tokens"]["output_max"], 16484);
    assert_eq!(deep["reasoning_knob"]["budget_tokens"], 16384);
    assert_eq!(deep["reasoning_knob"]["sent"], true);
    let standard = step("claude_standard");
    assert_eq!(standard["tokens"]["output_max"], 100);
    assert!(standard.get("reasoning_knob").is_none(), "{standard}");
    let more = deep["cost"]["high"].as_f64().unwrap() - standard["cost"]["high"].as_f64().unwrap();
    // 16,384 more output tokens at claude-sonnet-4-6's output price (the
    // prompts differ by a token or two: `deep` vs `standard`).
    let catalog = tollgate::catalog::Catalog::builtin();
    let price = catalog
        .lookup("anthropic", "claude-sonnet-4-6")
        .expect("in the catalog")
        .output_per_token;
    assert!((more - 16384.0 * price).abs() < 1e-5, "{more}");
    let nano = step("nano_deep");
    assert_eq!(nano["reasoning_knob"]["sent"], false);
    assert_eq!(nano["tokens"]["output_max"], 100);
}
