//! The learned router end to end: `compare` keeps each case's outcome per
//! variant (with the prompt a router reads), `router train` fits a router
//! from it — the same file byte for byte every time —, a policy's
//! `router:` condition routes by its score in `plan` (the gate still
//! applies), `router eval` reports the curve, and a hostile router file is
//! a located error.

use fake_llm::{FakeServer, Reply};
use serde_json::{Value, json};

use crate::support::{Project, report, stderr, stdout, step, team_policy, transcript};

/// Prompts the cheap model gets right (short label questions) and wrong
/// (long proofs), 30 of each: separable by their words.
fn prompt(i: usize) -> String {
    if i % 2 == 0 {
        format!("Classify ticket {i} as bug or feature.")
    } else {
        format!("Explain the proof of theorem {i} step by step, in detail.")
    }
}

fn cases_jsonl() -> String {
    (0..60)
        .map(|i| {
            json!({
                "name": format!("c{i:02}"),
                "inputs": { "q": prompt(i) },
                "expect": { "answer": { "equals": "right" } },
            })
            .to_string()
                + "\n"
        })
        .collect()
}

/// The cheap (local) model answers only the label questions right; the
/// cloud models answer everything right.
fn answer(r: &fake_llm::Recorded) -> Reply {
    let local = r.model() == "local-llm";
    if local && r.raw_body.contains("Explain the proof") {
        Reply::text("wrong").usage(20, 1)
    } else {
        Reply::text("right").usage(20, 1)
    }
}

const WORKFLOW: &str = r#"version: 1
name: qa
inputs:
  q: { type: string }
steps:
  answer:
    task: extract
    prompt: "{{ inputs.q }}"
    max_output_tokens: 5
"#;

fn cheap_policy(base: &str) -> String {
    format!(
        r#"version: 1
name: cheap
sensitivity: {{ levels: [public, internal, confidential, secret], cloud_max: internal }}
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

/// A comparison of the cheap and the team policy over the 60 cases,
/// recorded against the fake: its JSON, as `compare --out` wrote it.
async fn comparison(fake: &FakeServer) -> (Project, Value) {
    let base = fake.base_url();
    let p = Project::new(&cheap_policy(&base), WORKFLOW)
        .with("policies/cheap.yaml", &cheap_policy(&base))
        .with("policies/team.yaml", &team_policy(&base, ""))
        .with("evals/cases.jsonl", &cases_jsonl())
        .with(
            "evals/qa.yaml",
            "workflow: ../wf.yaml\npolicy: ../policies/cheap.yaml\ncases_from: cases.jsonl\n",
        );
    let out = p
        .tollgate(&[
            "compare",
            "evals/qa.yaml",
            "--policy",
            "policies/cheap.yaml",
            "--policy",
            "policies/team.yaml",
            "--record",
            "--out",
            "cmp.json",
            "-q",
        ])
        .keys()
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let v: Value = serde_json::from_str(&p.read("cmp.json")).expect("JSON");
    (p, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_keeps_outcomes_and_train_is_reproducible_and_routes_by_score() {
    let fake = FakeServer::start().await;
    fake.set_handler(answer);
    let (p, cmp) = comparison(&fake).await;

    // Per case, per variant, step by step: the outcome and the prompt.
    let cases = cmp["suites"][0]["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 60);
    let c1 = cases.iter().find(|c| c["case"] == "c01").expect("c01");
    let of = |v: &str| {
        c1["variants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["variant"] == v)
            .unwrap()["steps"][0]
            .clone()
    };
    assert_eq!(of("cheap")["passed"], false);
    assert_eq!(of("team")["passed"], true);
    assert_eq!(of("cheap")["prompt"], prompt(1));
    assert!(of("team")["cost_usd"].as_f64().unwrap() > 0.0);

    // Trained twice: the same bytes.
    let train = |out: &str| {
        p.tollgate(&[
            "router",
            "train",
            "cmp.json",
            "--target-strong-share",
            "50%",
            "-o",
            out,
        ])
        .output()
    };
    let a = train("routers/a.json");
    assert_eq!(a.status.code(), Some(0), "{}", transcript(&a));
    assert!(
        stdout(&a).contains("weak cheap / strong team"),
        "{}",
        stdout(&a)
    );
    let b = train("routers/b.json");
    assert_eq!(b.status.code(), Some(0), "{}", transcript(&b));
    let file = p.read("routers/a.json");
    assert_eq!(file, p.read("routers/b.json"));
    // The file keeps weights, never the prompts it learnt from.
    assert!(!file.contains("theorem"), "{file}");
    let r: Value = serde_json::from_str(&file).unwrap();
    assert_eq!(
        (r["format"].as_str(), r["version"].as_u64()),
        (Some("tollgate-router"), Some(1))
    );
    assert_eq!(r["training"]["examples"], 60);

    // A policy routes by the router's score: proofs to the cloud, labels
    // local — and a confidential proof stays local (the gate).
    let policy = team_policy(&fake.base_url(), "").replace(
        "rules:\n",
        "fallbacks: { flagship: [local] }\nrules:\n  - name: router-says-strong\n    when: { router: { file: ../routers/a.json, threshold: 0.5 } }\n    use: flagship\n",
    );
    p.write("policies/routed.yaml", &policy);
    p.write(
        "routed.yaml",
        r#"version: 1
name: routed
inputs:
  secret: { type: string, sensitivity: confidential, example: "s3cr3t-value" }
steps:
  label:
    task: extract
    prompt: "Classify ticket 7 as bug or feature."
  proof:
    task: extract
    prompt: "Explain the proof of theorem 7 step by step, in detail."
  secret_proof:
    task: extract
    prompt: "Explain the proof of theorem 7 step by step, in detail. {{ inputs.secret }}"
"#,
    );
    let plan = p
        .tollgate(&[
            "plan",
            "routed.yaml",
            "--policy",
            "policies/routed.yaml",
            "--format",
            "json",
        ])
        .output();
    assert_eq!(plan.status.code(), Some(0), "{}", transcript(&plan));
    let plan: Value = serde_json::from_slice(&plan.stdout).unwrap();
    let planned = |id: &str| {
        plan["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .unwrap()
            .clone()
    };
    let (label, proof, secret) = (planned("label"), planned("proof"), planned("secret_proof"));
    assert_eq!(proof["route"]["model"], "flagship", "{proof}");
    assert_eq!(proof["routers"][0]["holds"], true);
    assert!(proof["routers"][0]["score"].as_f64().unwrap() > 0.5);
    assert_ne!(label["route"]["model"], "flagship", "{label}");
    assert_eq!(label["routers"][0]["holds"], false);
    // The router said strong; the gate passed the cloud model over.
    assert_eq!(secret["routers"][0]["holds"], true, "{secret}");
    assert_eq!(secret["route"]["model"], "local", "{secret}");
    assert_eq!(
        secret["route"]["passed_over"][0]["reason"], "sensitivity_gate",
        "{secret}"
    );
    // The text plan shows the score and the verdict.
    let text = p
        .tollgate(&["plan", "routed.yaml", "--policy", "policies/routed.yaml"])
        .output();
    assert!(
        stdout(&text).contains("router       rule router-says-strong: ../routers/a.json score"),
        "{}",
        stdout(&text)
    );

    // A policy test file states the router's promises: given a prompt,
    // the route (and without a prompt, the router's rule does not hold).
    p.write(
        "policies/tests/routed.yaml",
        r#"policy: ../routed.yaml
tests:
  - name: a proof goes to the flagship
    step: { task: extract, prompt: "Explain the proof of theorem 7 step by step, in detail." }
    expect: { model: flagship, rule: router-says-strong }
  - name: a label stays off the flagship
    step: { task: extract, prompt: "Classify ticket 7 as bug or feature." }
    expect: { not_model: flagship }
  - name: a confidential proof stays local
    step: { task: extract, sensitivity: confidential, prompt: "Explain the proof of theorem 7 step by step, in detail." }
    expect: { locality: local, rule: router-says-strong }
  - name: no prompt, no router verdict
    step: { task: extract }
    expect: { not_model: flagship }
"#,
    );
    let pt = p
        .tollgate(&["test", "policies/tests/routed.yaml", "--format", "json"])
        .output();
    assert_eq!(pt.status.code(), Some(0), "{}", transcript(&pt));

    // `run` routes by the same score on the prompts it really sends.
    let run = p
        .tollgate(&[
            "run",
            "routed.yaml",
            "--policy",
            "policies/routed.yaml",
            "--input",
            "secret=s3cr3t-value",
            "--format",
            "json",
        ])
        .keys()
        .await;
    assert_eq!(run.status.code(), Some(0), "{}", transcript(&run));
    let r = report(&run);
    assert_eq!(step(&r, "proof")["model"], "flagship", "{r}");
    assert_ne!(step(&r, "label")["model"], "flagship", "{r}");
    assert_eq!(step(&r, "secret_proof")["model"], "local", "{r}");
    assert!(
        fake.requests()
            .iter()
            .filter(|q| q.raw_body.contains("s3cr3t-value"))
            .all(|q| q.model() == "local-llm")
    );

    // `router eval`: on the test split, the router separates the two kinds
    // of prompt perfectly, so it recovers the gap by the weak model's
    // failure share; random routing recovers it linearly (APGR 0.55 on
    // RouteLLM's grid of ten shares).
    let ev = p
        .tollgate(&[
            "router",
            "eval",
            "routers/a.json",
            "cmp.json",
            "--format",
            "json",
        ])
        .output();
    assert_eq!(ev.status.code(), Some(0), "{}", transcript(&ev));
    let ev: Value = serde_json::from_slice(&ev.stdout).unwrap();
    // The test split by hand: the keys whose hash falls in bucket 0.
    let test: Vec<usize> = (0..60)
        .filter(|i| {
            tollgate::router::split(&format!("qa/c{i:02}/answer")) == tollgate::router::Split::Test
        })
        .collect();
    assert_eq!(ev["examples"], test.len());
    let weak_ok = test.iter().filter(|i| *i % 2 == 0).count() as f64 / test.len() as f64;
    assert!((ev["weak_quality"].as_f64().unwrap() - weak_ok).abs() < 1e-12);
    assert_eq!(ev["strong_quality"], 1.0);
    assert!((ev["random_apgr"].as_f64().unwrap() - 0.55).abs() < 1e-12);
    assert!(ev["apgr"].as_f64().unwrap() > 0.7, "{ev}");
    assert_eq!(ev["router"].as_array().unwrap().len(), 11);
    assert_eq!(ev["router"][10]["quality"], 1.0);

    // Another variant beside the router at its own strong share: the team
    // policy sends every prompt to the cloud (share 1, quality 1).
    let vs = p
        .tollgate(&[
            "router",
            "eval",
            "routers/a.json",
            "cmp.json",
            "--versus",
            "team",
            "--format",
            "json",
        ])
        .output();
    assert_eq!(vs.status.code(), Some(0), "{}", transcript(&vs));
    let vs: Value = serde_json::from_slice(&vs.stdout).unwrap();
    let team = &vs["versus"][0];
    assert_eq!(
        (team["variant"].as_str(), team["examples"].as_u64()),
        (Some("team"), Some(test.len() as u64))
    );
    assert_eq!(
        (team["strong_share"].as_f64(), team["quality"].as_f64()),
        (Some(1.0), Some(1.0))
    );
    assert_eq!(team["router"]["quality"], 1.0);
    let bad = p
        .tollgate(&[
            "router",
            "eval",
            "routers/a.json",
            "cmp.json",
            "--versus",
            "nope",
        ])
        .output();
    assert_eq!(bad.status.code(), Some(2), "{}", transcript(&bad));
    assert!(
        stderr(&bad).contains("no variant named \"nope\""),
        "{}",
        transcript(&bad)
    );
}

/// Every way a router file can be wrong is one located error (exit 2),
/// from `check` and `plan` alike.
#[test]
fn a_hostile_router_file_is_a_located_error() {
    let good = good_router();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "truncated",
            good[..good.len() / 2].to_owned(),
            "router.json:",
        ),
        (
            "bucket out of range",
            good.replace("\"weights\": {", "\"weights\": {\"99999\": 1.0,"),
            "weight bucket 99999 is not below buckets",
        ),
        (
            "not finite",
            good.replace("\"bias\": ", "\"bias\": 1e999, \"x\": "),
            "router.json:",
        ),
        (
            "unknown version",
            good.replace("\"version\": 1", "\"version\": 7"),
            "version 7 is not supported",
        ),
        (
            "unknown key",
            good.replace("\"bias\"", "\"extra\": 1, \"bias\""),
            "unknown field `extra`",
        ),
        (
            "unsorted calibration",
            good.replace(
                "\"calibration_scores\": [",
                "\"calibration_scores\": [0.99, ",
            ),
            "calibration_scores must be ascending",
        ),
        (
            "too large",
            format!("{}{}", " ".repeat(9 * 1024 * 1024), good),
            "larger than the limit",
        ),
    ];
    for (what, text, says) in cases {
        let p = Project::new(
            &routed_policy(),
            "version: 1\nsteps:\n  a:\n    task: extract\n    prompt: hi\n",
        )
        .with("router.json", &text);
        for args in [
            &["check", "policy.yaml"][..],
            &["plan", "wf.yaml", "--policy", "policy.yaml"],
        ] {
            let out = p.tollgate(args).output();
            assert_eq!(out.status.code(), Some(2), "{what}: {}", transcript(&out));
            assert!(stderr(&out).contains(says), "{what}: {}", transcript(&out));
        }
        // Located: in the router file, or at the policy line naming it.
        let out = p
            .tollgate(&["check", "policy.yaml", "--format", "json"])
            .output();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let d = &v["diagnostics"][0];
        assert!(d["line"].is_u64() && d["column"].is_u64(), "{what}: {v}");
    }
    // A directory where the file should be: named at the policy's line.
    let p = Project::new(
        &routed_policy(),
        "version: 1\nsteps:\n  a:\n    task: extract\n    prompt: hi\n",
    )
    .with("router.json/x", "");
    let out = p.tollgate(&["check", "policy.yaml"]).output();
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    assert!(
        stderr(&out).contains("policy.yaml:"),
        "{}",
        transcript(&out)
    );
    // Both a threshold and a target share: one located error.
    let p = Project::new(
        &routed_policy().replace("threshold: 0.5", "threshold: 0.5, target_strong_share: 0.2"),
        "version: 1\nsteps:\n  a:\n    task: extract\n    prompt: hi\n",
    )
    .with("router.json", &good);
    let out = p.tollgate(&["check", "policy.yaml"]).output();
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    assert!(stderr(&out).contains("not both"), "{}", transcript(&out));
}

fn routed_policy() -> String {
    r#"version: 1
name: routed
sensitivity: { levels: [public, internal], cloud_max: internal }
providers:
  local: { kind: openai-compatible, base_url: "http://127.0.0.1:9/v1" }
models:
  small: { provider: local, model: small, tier: local, context_window: 8192 }
  big: { provider: local, model: big, tier: workhorse, context_window: 8192 }
rules:
  - name: hard
    when: { router: { file: router.json, threshold: 0.5 } }
    use: big
  - name: rest
    use: small
"#
    .to_owned()
}

/// A valid router file, trained in process on a tiny set.
fn good_router() -> String {
    let data: Vec<tollgate::router::Example> = (0..40)
        .map(|i| tollgate::router::Example {
            key: format!("s/c{i}/a"),
            text: prompt(i),
            weak_ok: i % 2 == 0,
            strong_ok: true,
            weak_cost_usd: 0.0,
            strong_cost_usd: 1.0,
        })
        .collect();
    tollgate::router::train(&data, "weak", "strong", 64, 0.5)
        .expect("trains")
        .to_json()
}

/// `router train` reads a comparison file someone else may have written:
/// every hostile form is one clear error (exit 2), nothing is written, and
/// no read is unbounded.
#[test]
fn a_hostile_comparison_file_is_one_error_and_writes_nothing() {
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let cases: Vec<(&str, String)> = vec![
        ("not JSON", "suites: yes\n".to_owned()),
        ("deeply nested", nested),
        (
            "wrong shape",
            r#"{"variants": 3, "suites": "x"}"#.to_owned(),
        ),
        (
            "no cases",
            r#"{"version": 1, "mode": "replay", "variants": ["a", "b"], "suites": []}"#.to_owned(),
        ),
        ("too large", " ".repeat(40 * 1024 * 1024)),
    ];
    for (what, text) in cases {
        let p = Project::new(
            &routed_policy(),
            "version: 1\nsteps:\n  a:\n    task: extract\n    prompt: hi\n",
        )
        .with("cmp.json", &text);
        let out = p
            .tollgate(&["router", "train", "cmp.json", "-o", "out.json"])
            .output();
        assert_eq!(out.status.code(), Some(2), "{what}: {}", transcript(&out));
        assert!(
            stderr(&out).contains("cmp.json"),
            "{what}: {}",
            transcript(&out)
        );
        assert!(
            !p.path().join("out.json").exists(),
            "{what}: wrote a router"
        );
    }
}
