//! `tollgate compare` and `tollgate test --policy/--model` end to end: the
//! same suite under several policies or model pins, recorded against the
//! loopback fake, replayed offline, aggregated per suite and per task, with
//! the Pareto front; and the repository's own comparison example replayed.

use fake_llm::{FakeServer, Reply};
use serde_json::Value;

use crate::support::{KEY, Project, root, stderr, stdout, team_policy, tollgate, transcript};

/// Everything on one free local model.
fn cheap_policy(base: &str) -> String {
    format!(
        r#"version: 1
name: cheap
sensitivity: {{ levels: [public, internal, confidential], cloud_max: internal }}
providers:
  local: {{ kind: openai-compatible, base_url: "{base}/v1" }}
models:
  local: {{ provider: local, model: local-llm, tier: local, context_window: 8192 }}
rules:
  - name: everything-local
    use: local
"#
    )
}

const WORKFLOW: &str = r#"version: 1
name: triage
inputs:
  ticket: { type: string }
steps:
  classify:
    task: classify
    prompt: "Label as bug or feature: {{ inputs.ticket }}"
    max_output_tokens: 5
  reply:
    task: write
    prompt: "Reply to the customer: {{ inputs.ticket }}"
    max_output_tokens: 60
"#;

const SUITE: &str = r#"workflow: ../wf.yaml
policy: ../policies/cheap.yaml
cases:
  - name: crash
    inputs: { ticket: "The app crashes on save." }
    expect:
      classify: { equals: bug }
      reply: { judge: "The reply apologises." }
  - name: dark-mode
    inputs: { ticket: "Please add a dark mode." }
    expect:
      classify: { equals: feature }
"#;

/// The small local model always says `feature` and never apologises; the
/// cloud models answer right. The judge passes a reply that apologises.
fn answer(r: &fake_llm::Recorded) -> Reply {
    let body = &r.raw_body;
    if body.contains("You grade an answer against a rubric") {
        let pass = body.contains("We apologise");
        return Reply::text(format!(
            "{{\"verdict\": \"{}\", \"reason\": \"checked\"}}",
            if pass { "pass" } else { "fail" }
        ))
        .usage(60, 8);
    }
    let local = r.model() == "local-llm";
    if body.contains("Label as bug or feature") {
        let label = if !local && body.contains("crash") {
            "bug"
        } else {
            "feature"
        };
        return Reply::text(label).usage(20, 1);
    }
    if local {
        Reply::text("Thanks.").usage(25, 2)
    } else {
        Reply::text("We apologise for the trouble; a fix is coming.").usage(25, 10)
    }
}

fn project(fake: &FakeServer) -> Project {
    let base = fake.base_url();
    Project::new(&cheap_policy(&base), WORKFLOW)
        .with("policies/cheap.yaml", &cheap_policy(&base))
        .with("policies/team.yaml", &team_policy(&base, ""))
        .with("evals/triage.yaml", SUITE)
}

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", transcript(out)))
}

fn row<'a>(table: &'a Value, variant: &str) -> &'a Value {
    table["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["variant"] == variant)
        .unwrap_or_else(|| panic!("no row {variant} in {table}"))
}

fn task<'a>(suite: &'a Value, name: &str) -> &'a Value {
    suite["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .find(|t| t["task"] == name)
        .unwrap_or_else(|| panic!("no task {name}"))
}

const TWO_POLICIES: [&str; 6] = [
    "compare",
    "evals/triage.yaml",
    "--policy",
    "policies/cheap.yaml",
    "--policy",
    "policies/team.yaml",
];

fn args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    TWO_POLICIES
        .iter()
        .copied()
        .chain(extra.iter().copied())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_policies_are_recorded_apart_compared_and_replayed_offline() {
    let fake = FakeServer::start().await;
    fake.set_handler(answer);
    let p = project(&fake);

    let out = p
        .tollgate(&args(&["--record", "--format", "json"]))
        .keys()
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    assert!(!transcript(&out).contains(KEY));
    // The suite's own policy keeps the suite's recordings; the other has its own.
    assert!(p.exists("evals/cassettes/triage.json"));
    assert!(p.exists("evals/cassettes/triage/team.json"));
    let cheap_cassette = p.read("evals/cassettes/triage.json");
    assert!(!cheap_cassette.contains("gpt-4.1-nano"), "{cheap_cassette}");
    assert!(
        p.read("evals/cassettes/triage/team.json")
            .contains("gpt-4.1-nano")
    );
    let recorded = json(&out);
    let sent = fake.request_count();

    let s = &recorded["suites"][0];
    let (cheap, team) = (row(s, "cheap"), row(s, "team"));
    assert_eq!(
        (cheap["passed"].as_u64(), cheap["cases"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(cheap["pass_rate"], 0.5);
    assert_eq!(team["pass_rate"], 1.0);
    // One judged reply per variant: the local one fails, the cloud one passes.
    assert_eq!(
        (cheap["judged"].as_u64(), cheap["judge_score"].as_f64()),
        (Some(1), Some(0.0))
    );
    assert_eq!(team["judge_score"], 1.0);
    assert_eq!(cheap["cost_usd"], 0.0);
    assert!(team["cost_usd"].as_f64().unwrap() > 0.0);
    assert!(team["judge_cost_usd"].as_f64().unwrap() > 0.0, "{team}");
    // The first variant is free: no ratio to it.
    assert_eq!(team["cost_vs_first"], Value::Null);
    assert_eq!(cheap["local_share"], 1.0);
    assert_eq!(team["local_share"], 0.0);
    // classify → budget, reply → workhorse, twice each; the judge is apart.
    assert_eq!(
        team["tier_shares"],
        serde_json::json!({"budget": 0.5, "workhorse": 0.5})
    );
    assert_eq!(team["calls"], 4);
    // Free at 50% and paid at 100%: both on the front.
    assert_eq!(
        (cheap["pareto"].as_bool(), team["pareto"].as_bool()),
        (Some(true), Some(true))
    );
    assert!(cheap["model_ms"]["p50"].is_u64(), "{cheap}");

    // Per task: classify is checked by both cases, write by one.
    let classify = task(s, "classify");
    assert_eq!(classify["steps"], serde_json::json!(["classify"]));
    assert_eq!(row(classify, "cheap")["pass_rate"], 0.5);
    assert_eq!(
        row(classify, "team")["tier_shares"],
        serde_json::json!({"budget": 1.0})
    );
    let write = task(s, "write");
    assert_eq!(
        (
            row(write, "cheap")["cases"].as_u64(),
            row(write, "cheap")["passed"].as_u64()
        ),
        (Some(1), Some(0))
    );
    assert_eq!(row(write, "team")["pass_rate"], 1.0);
    assert_eq!(row(write, "team")["judge_score"], 1.0);

    // Replayed with the server gone: the same comparison, nothing sent.
    drop(fake);
    let out = p.tollgate(&args(&["--replay", "--format", "json"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let mut replayed = json(&out);
    assert_eq!(replayed["mode"], "replay");
    replayed["mode"] = recorded["mode"].clone();
    assert_eq!(replayed, recorded);
    assert!(sent > 0);

    // The text: one table per suite and per task, the front marked.
    let out = p.tollgate(&args(&["--replay", "--quiet"])).await;
    let text = stdout(&out);
    assert!(text.contains("* cheap"), "{text}");
    assert!(text.contains("* team"), "{text}");
    assert!(text.contains("task classify (step classify)"), "{text}");
    assert!(
        text.contains("cheapest for its pass rate: cheap at 50% for $0 → team at 100% for $"),
        "{text}"
    );
    assert!(text.contains("judge"), "{text}");

    // A bar to clear: the cheap policy is under it, and that fails the command.
    let out = p
        .tollgate(&args(&["--replay", "--min-pass-rate", "80%"]))
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    assert!(
        stdout(&out).contains("cheapest passing at least 80%: team ($"),
        "{}",
        transcript(&out)
    );
    assert!(
        stderr(&out).contains("suite `triage` passes 50% under `cheap`, below --min-pass-rate 80%"),
        "{}",
        transcript(&out)
    );
    let out = p
        .tollgate(&args(&["--replay", "--min-pass-rate", "0.5"]))
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_policy_overrides_the_suites_policy_and_keeps_its_own_recordings() {
    let fake = FakeServer::start().await;
    fake.set_handler(answer);
    let p = project(&fake);

    let out = p
        .tollgate(&[
            "test",
            "evals/triage.yaml",
            "--policy",
            "policies/team.yaml",
            "--record",
            "--results",
            "r.json",
            "--junit",
            "j.xml",
        ])
        .keys()
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    assert!(
        stdout(&out).contains("suite triage (wf.yaml × policies/team.yaml, 2 cases)"),
        "{}",
        transcript(&out)
    );
    assert!(p.exists("evals/cassettes/triage/team.json"));
    assert!(
        !p.exists("evals/cassettes/triage.json"),
        "the suite's own recordings are untouched"
    );
    let r: Value = serde_json::from_str(&p.read("r.json")).unwrap();
    assert_eq!(r["suites"][0]["policy"], "policies/team.yaml");
    assert_eq!(r["suites"][0]["variant"]["name"], "team");
    assert!(
        p.read("j.xml")
            .contains(r#"<property name="policy" value="policies/team.yaml"/>"#)
    );
    assert!(
        p.read("j.xml")
            .contains(r#"<property name="variant" value="team"/>"#)
    );

    // Under its own policy the suite has no recordings yet: refused, not
    // answered from the team policy's.
    let out = p.tollgate(&["test", "evals/triage.yaml", "--replay"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    assert!(
        stderr(&out).contains("no recorded responses at evals/cassettes/triage.json"),
        "{}",
        transcript(&out)
    );
    let out = p
        .tollgate(&[
            "test",
            "evals/triage.yaml",
            "--replay",
            "--policy",
            "policies/team.yaml",
        ])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));

    // A model pin: every step on it, the judge still routed by the policy.
    let out = p
        .tollgate(&[
            "compare",
            "evals/triage.yaml",
            "--policy",
            "policies/team.yaml",
            "--model",
            "budget",
            "--model",
            "local",
            "--record",
            "--format",
            "json",
        ])
        .keys()
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let c = json(&out);
    assert_eq!(
        c["variants"],
        serde_json::json!(["team+budget", "team+local"])
    );
    let s = &c["suites"][0];
    assert_eq!(
        row(s, "team+budget")["tier_shares"],
        serde_json::json!({"budget": 1.0})
    );
    assert_eq!(row(s, "team+budget")["model"], "budget");
    assert_eq!(
        row(s, "team+local")["tier_shares"],
        serde_json::json!({"local": 1.0})
    );
    assert_eq!(row(s, "team+local")["pass_rate"], 0.5);
    assert!(p.exists("evals/cassettes/triage/team+budget.json"));
    assert!(p.exists("evals/cassettes/triage/team+local.json"));
    let pinned: Vec<String> = fake
        .requests()
        .iter()
        .filter(|r| r.raw_body.contains("Label as bug"))
        .map(|r| r.model())
        .collect();
    assert!(
        pinned.contains(&"local-llm".to_owned()) && pinned.contains(&"gpt-4.1-nano".to_owned()),
        "{pinned:?}"
    );
}

#[test]
fn bad_variants_are_refused_before_anything_runs() {
    let base = "http://127.0.0.1:9";
    let p = Project::new(&cheap_policy(base), WORKFLOW)
        .with("policies/cheap.yaml", &cheap_policy(base))
        .with("policies/team.yaml", &team_policy(base, ""))
        .with("other/team.yaml", &team_policy(base, ""))
        .with("evals/triage.yaml", SUITE);
    // JSON diagnostics: messages and hints unwrapped.
    let run = |a: &[&str]| {
        let mut all = a.to_vec();
        all.extend(["--format", "json"]);
        crate::support::tollgate_in(p.path(), &all)
    };

    let out = run(&["compare", "evals/triage.yaml"]);
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    assert!(
        stdout(&out).contains("compare needs --policy or --model"),
        "{}",
        transcript(&out)
    );

    let out = run(&[
        "compare",
        "evals/triage.yaml",
        "--policy",
        "policies/nope.yaml",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    assert!(
        stdout(&out).contains("policies/nope.yaml"),
        "{}",
        transcript(&out)
    );

    let out = run(&[
        "compare",
        "evals/triage.yaml",
        "--policy",
        "policies/team.yaml",
        "--model",
        "flagshp",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    let err = stdout(&out);
    assert!(
        err.contains("--model flagshp: policy `fake-team` has no model `flagshp`"),
        "{err}"
    );
    assert!(err.contains("flagship"), "{err}");
    assert!(err.contains("policies/team.yaml"), "{err}");

    let out = run(&["test", "evals/triage.yaml", "--model", "budget"]);
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    assert!(
        stdout(&out).contains("policy `cheap` has no model `budget`"),
        "{}",
        transcript(&out)
    );

    let out = run(&[
        "compare",
        "evals/triage.yaml",
        "--policy",
        "policies/team.yaml",
        "--policy",
        "other/team.yaml",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    assert!(
        stdout(&out).contains("are both named `team`"),
        "{}",
        transcript(&out)
    );

    let out = run(&[
        "compare",
        "evals/triage.yaml",
        "--model",
        "local",
        "--min-pass-rate",
        "1.5",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    assert!(
        stdout(&out).contains("--min-pass-rate 1.5"),
        "{}",
        transcript(&out)
    );

    // A variant without recordings, in replay: named, with how to record it;
    // the variant that has them did not run either.
    let out = run(&[
        "compare",
        "evals/triage.yaml",
        "--policy",
        "policies/team.yaml",
        "--replay",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    let err = stdout(&out);
    assert!(
        err.contains("suite `triage` has no recorded responses under variant `team`"),
        "{err}"
    );
    assert!(
        err.contains("--record --policy policies/team.yaml"),
        "{err}"
    );
}

/// The repository's example, replayed: Gemma's real answers under the local
/// policy against the fake's under the team default.
#[test]
fn the_example_comparison_replays_offline() {
    let out = tollgate(&[
        "compare",
        "examples/compare/compare.yaml",
        "--policy",
        "policies/local.yaml",
        "--policy",
        "policies/default.yaml",
        "--replay",
        "--quiet",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    insta::assert_snapshot!("example_comparison", stdout(&out));
}

/// Records the example's team-policy answers again:
/// `TOLLGATE_RECORD_EXAMPLE=1 cargo test --test integration compare::record`.
/// The fake stands in for the cloud models and answers right, with a
/// fixed latency; `policies/default.yaml` is copied with its servers
/// pointed at the fake (a recording's key is the request, not the server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_the_example_team_answers() {
    if std::env::var_os("TOLLGATE_RECORD_EXAMPLE").is_none() {
        return;
    }
    let fake = FakeServer::start().await;
    fake.set_handler(|r| {
        let body = &r.raw_body;
        let freezes = body.contains("freezes");
        let text = if body.contains("Classify this ticket") {
            format!(
                r#"{{"label": "{}"}}"#,
                if freezes { "bug" } else { "feature" }
            )
        } else if body.contains("How urgent") {
            format!(
                r#"{{"urgency": "{}"}}"#,
                if freezes { "high" } else { "low" }
            )
        } else {
            r#"{"team": "storage"}"#.to_owned()
        };
        Reply::text(text)
            .usage(if body.contains("Which team") { 48 } else { 30 }, 7)
            .delay(std::time::Duration::from_millis(600))
    });
    let base = fake.base_url();
    let policy = std::fs::read_to_string(root().join("policies/default.yaml")).unwrap();
    let pointed = policy
        .replace("http://127.0.0.1:11434/v1", &format!("{base}/v1"))
        .replace(
            "{ kind: openai,    api_key_env",
            &format!("{{ kind: openai, base_url: \"{base}/v1\", api_key_env"),
        )
        .replace(
            "{ kind: anthropic, api_key_env",
            &format!("{{ kind: anthropic, base_url: \"{base}\", api_key_env"),
        );
    assert_eq!(pointed.matches(&base).count(), 3, "{pointed}");
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("default.yaml");
    std::fs::write(&copy, pointed).unwrap();
    let out = crate::support::Cmd::new(
        &root(),
        &[
            "compare",
            "examples/compare/compare.yaml",
            "--policy",
            copy.to_str().unwrap(),
            "--record",
            "--quiet",
        ],
    )
    .envs(&[("OPENAI_API_KEY", KEY), ("ANTHROPIC_API_KEY", KEY)])
    .env("TOLLGATE_STATE", dir.path().to_str().unwrap())
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
}
