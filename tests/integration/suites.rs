//! `tollgate test` and `tollgate merge` end to end: the binary, a temporary
//! project with a suite, and the loopback fakes. Each test is something a
//! team relies on in CI: assertions that catch regressions, snapshots that
//! need review, recordings that replay offline, shards that merge back.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fake_llm::{FakeServer, Reply};
use serde_json::Value;

use crate::support::{KEY, Project, stable_table_output, stdout, transcript};

fn policy(fake: &FakeServer) -> String {
    let base = fake.base_url();
    format!(
        r#"version: 1
name: suite-policy
sensitivity: {{ levels: [public, internal, confidential], cloud_max: internal }}
providers:
  local:     {{ kind: openai-compatible, base_url: "{base}/v1" }}
  openai:    {{ kind: openai, base_url: "{base}/v1", api_key_env: TEST_OPENAI_KEY }}
  anthropic: {{ kind: anthropic, base_url: "{base}", api_key_env: TEST_ANTHROPIC_KEY }}
models:
  local:     {{ provider: local, model: local-llm, tier: local, context_window: 8192 }}
  budget:    {{ provider: openai, model: gpt-4.1-nano, tier: budget }}
  workhorse: {{ provider: anthropic, model: claude-sonnet-4-6, tier: workhorse }}
rules:
  - name: sensitive-stays-local
    when: {{ sensitivity: {{ above: internal }} }}
    use: local
  - name: volume
    when: {{ task: [classify] }}
    use: budget
  - name: rest
    use: workhorse
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
  summarize:
    task: summarize
    latency: batch          # `run` would batch it; `test` never does
    prompt: "Summarize: {{ inputs.ticket }}"
    max_output_tokens: 50
"#;

/// Answers like a model would: a label, and a summary that repeats the ticket.
fn answer(r: &fake_llm::Recorded) -> Reply {
    let body = &r.raw_body;
    if body.contains("Label as bug or feature") {
        let label = if body.contains("crash") || body.contains("freez") {
            "bug"
        } else {
            "feature"
        };
        return Reply::text(label).usage(20, 1);
    }
    if let Some(rest) = body.split("Summarize: ").nth(1) {
        let ticket: String = rest.chars().take_while(|c| *c != '"').collect();
        return Reply::text(format!("Summary: {ticket}")).usage(30, 12);
    }
    Reply::text("?")
}

/// A project holding the suite `evals/triage.yaml` beside its workflow and
/// policy.
fn suite_project(policy: &str, workflow: &str, suite: &str) -> Project {
    Project::new(policy, workflow).with("evals/triage.yaml", suite)
}

/// Results JSON without what changes from run to run (wall times).
fn stable(mut v: Value) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.remove("elapsed_ms");
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut v);
    v
}

fn results(s: &Project, file: &str) -> Value {
    stable(serde_json::from_str(&s.read(file)).expect("results are JSON"))
}

const BASIC: &str = r#"workflow: ../wf.yaml
policy: ../policy.yaml
cases:
  - name: crash-on-save
    inputs: { ticket: "The app crashes when I save a 2 GB file." }
    expect:
      classify: { equals: bug }
      summarize: { contains: [crash, save], regex: "^Summary: ", snapshot: true }
  - name: dark-mode
    inputs: { ticket: "Please add a dark mode." }
    expect:
      classify: { equals: feature, max_tokens: 5, max_cost_usd: 0.01 }
      summarize: { not_contains: crash, snapshot: normalized }
"#;

/// [`BASIC`] without its snapshot assertions.
fn basic_without_snapshots() -> String {
    BASIC
        .replace(", snapshot: true", "")
        .replace(", snapshot: normalized", "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_suite_replays_offline_with_identical_results() {
    let fake = FakeServer::start().await;
    fake.set_handler(answer);
    let s = suite_project(&policy(&fake), WORKFLOW, BASIC);

    // First recording: the assertions hold, the snapshots are new.
    let out = s.tollgate(&["test", "--record"]).keys().await;
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    assert!(
        stdout(&out).contains("no snapshot yet"),
        "{}",
        transcript(&out)
    );
    assert!(s.exists("evals/snapshots/triage/crash-on-save.summarize.snap.new"));
    assert!(s.exists("evals/snapshots/triage/dark-mode.summarize.snap.new"));
    let pending = s.read("evals/snapshots/triage/crash-on-save.summarize.snap.new");
    assert!(
        pending.contains("model: workhorse (claude-sonnet-4-6)"),
        "{pending}"
    );
    assert!(pending.contains("prompt: sha256:"), "{pending}");
    assert!(
        pending.ends_with("---\nSummary: The app crashes when I save a 2 GB file.\n"),
        "{pending}"
    );

    let out = s.tollgate(&["test", "--accept"]).keys().await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    assert!(s.exists("evals/snapshots/triage/crash-on-save.summarize.snap"));
    assert!(!s.exists("evals/snapshots/triage/crash-on-save.summarize.snap.new"));

    // Recorded again (now green), then replayed: the same results.
    let out = s
        .tollgate(&["test", "--record", "--results", "recorded.json"])
        .keys()
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let sent = fake.request_count();
    assert_eq!(sent, 8, "two recordings of two cases × two steps");
    assert_eq!(
        fake.batches_created(),
        0,
        "a suite never goes through a batch API"
    );
    let cassette = s.read("evals/cassettes/triage.json");
    assert!(!cassette.contains(KEY), "a key leaked into the cassette");
    assert!(cassette.contains("Label as bug or feature: Please add a dark mode."));

    let out = s
        .tollgate_env(
            &["test", "--replay", "--ci", "--results", "replayed.json"],
            &[],
        )
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    assert_eq!(fake.request_count(), sent, "replay sent a request");
    assert!(
        stdout(&out).contains("replayed: nothing spent"),
        "{}",
        transcript(&out)
    );
    // Not a terminal: a plain line per finished case run on stderr.
    let progress = String::from_utf8_lossy(&out.stderr);
    assert!(
        progress.contains("passed triage/crash-on-save ("),
        "{progress}"
    );
    assert!(progress.contains("passed triage/dark-mode ("), "{progress}");
    let (mut rec, rep) = (results(&s, "recorded.json"), results(&s, "replayed.json"));
    assert_eq!(rec["mode"], "record");
    rec["mode"] = "replay".into();
    assert_eq!(rec, rep);
    // The recorded cost is reported: the cassette keeps the usage.
    assert!(rep["suites"][0]["cases"][0]["cost_usd"].as_f64().unwrap() > 0.0);

    // With the server gone, replay still works: nothing goes to the network.
    drop(fake);
    let out = s.tollgate_env(&["test", "--replay", "--ci"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_a_request_that_was_never_recorded_errors_clearly() {
    let fake = FakeServer::start().await;
    fake.set_handler(answer);
    let suite = basic_without_snapshots();
    let s = suite_project(&policy(&fake), WORKFLOW, &suite);
    let out = s.tollgate(&["test", "--record"]).keys().await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let sent = fake.request_count();

    // The prompt changed since the recording.
    s.write(
        "wf.yaml",
        &WORKFLOW.replace("Summarize: ", "Summarise briefly: "),
    );
    let out = s
        .tollgate_env(&["test", "--replay", "--junit", "junit.xml"], &[])
        .await;
    assert_eq!(fake.request_count(), sent);
    // Exit 1, both cases errored: no recorded response for this request to
    // `claude-sonnet-4-6`, record with `tollgate test --record`.
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let text = stdout(&out);
    stable_table_output(s.path()).bind(|| insta::assert_snapshot!("never_recorded", text));
    let junit = s.read("junit.xml");
    assert!(
        junit.contains("errors=\"2\"") && junit.contains("failures=\"0\""),
        "{junit}"
    );

    // A suite never recorded is bad input, before anything runs.
    std::fs::remove_file(s.path().join("evals/cassettes/triage.json")).unwrap();
    let out = s.tollgate_env(&["test", "--replay"], &[]).await;
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no recorded responses"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_output_fails_with_a_diff_and_waits_for_review() {
    let fake = FakeServer::start().await;
    fake.set_handler(answer);
    let s = suite_project(&policy(&fake), WORKFLOW, BASIC);
    s.tollgate(&["test"]).keys().await;
    s.tollgate(&["test", "--accept"]).keys().await;
    let out = s.tollgate(&["test"]).keys().await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));

    // The model now words its summary differently.
    fake.set_handler(|r| {
        if r.raw_body.contains("Summarize: The app") {
            Reply::text("Summary: The app crashes on save of a 2 GB file.").usage(30, 12)
        } else if r.raw_body.contains("Summarize: Please") {
            // Only whitespace differs: `normalized` lets it pass.
            Reply::text("Summary:  Please add a dark mode.\n").usage(30, 12)
        } else {
            answer(r)
        }
    });
    let out = s.tollgate(&["test", "--ci"]).keys().await;
    // Exit 1: crash-on-save FAILED with the diff of its summary; dark-mode
    // ok (only whitespace differs, and its snapshot is `normalized`).
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let text = stdout(&out);
    stable_table_output(s.path()).bind(|| insta::assert_snapshot!("changed_output_diff", text));
    assert!(
        !s.exists("evals/snapshots/triage/crash-on-save.summarize.snap.new"),
        "--ci wrote a file"
    );

    let out = s.tollgate(&["test"]).keys().await;
    assert_eq!(out.status.code(), Some(1));
    assert!(s.exists("evals/snapshots/triage/crash-on-save.summarize.snap.new"));
    let out = s.tollgate(&["test", "--accept=dark-mode"]).keys().await;
    assert!(
        stdout(&out).contains("no pending snapshots"),
        "{}",
        transcript(&out)
    );
    let out = s.tollgate(&["test", "--accept=crash-on-save"]).keys().await;
    assert!(stdout(&out).contains("accepted evals/snapshots/triage/crash-on-save.summarize.snap"));
    let out = s.tollgate(&["test", "--ci"]).keys().await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_assertions_say_which_case_step_expectation_and_answer() {
    let fake = FakeServer::start().await;
    fake.set_handler(|r| {
        if r.raw_body.contains("Label as") {
            Reply::text("feature").usage(20, 1)
        } else {
            Reply::text("Summary: I am sorry, I cannot help.").usage(30, 40)
        }
    });
    let suite = r#"workflow: ../wf.yaml
policy: ../policy.yaml
cases:
  - name: crash
    inputs: { ticket: "It crashes." }
    expect:
      classify: { equals: bug }
      summarize:
        contains: Crash
        ignore_case: true
        not_contains: [sorry]
        regex: "^Summary: It"
        max_tokens: 20
        json_schema: { type: object }
"#;
    let s = suite_project(&policy(&fake), WORKFLOW, suite);
    let out = s.tollgate(&["test", "--format", "json"]).keys().await;
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let case = &r["suites"][0]["cases"][0];
    assert_eq!(case["outcome"], "failed");
    let failures = case["runs"][0]["failures"].as_array().unwrap();
    let got: Vec<(&str, &str)> = failures
        .iter()
        .map(|f| {
            (
                f["step"].as_str().unwrap(),
                f["assertion"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("classify", "equals"),
            ("summarize", "contains"),
            ("summarize", "not_contains"),
            ("summarize", "regex"),
            ("summarize", "json_schema"),
            ("summarize", "max_tokens"),
        ]
    );
    assert_eq!(failures[0]["expected"], "bug");
    assert_eq!(failures[0]["actual"], "feature");
    assert!(
        failures[0]["diff"]
            .as_str()
            .unwrap()
            .contains("-bug\n+feature")
    );
    assert_eq!(failures[5]["actual"], "40");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_judge_grades_through_the_policy_and_keeps_sensitive_data_local() {
    let fake = FakeServer::start().await;
    fake.set_handler(|r| {
        let body = &r.raw_body;
        if body.contains("You grade an answer against a rubric") {
            let verdict = if body.contains("We apologise") {
                "pass"
            } else {
                "fail"
            };
            return Reply::text(format!(
                "{{\"verdict\": \"{verdict}\", \"reason\": \"the reply {} apologise\"}}",
                if verdict == "pass" {
                    "does"
                } else {
                    "does not"
                }
            ))
            .usage(80, 12);
        }
        if body.contains("Good customer") {
            Reply::text("We apologise for the crash; a fix ships Monday.").usage(30, 12)
        } else {
            Reply::text("Works as intended.").usage(30, 5)
        }
    });
    let wf = r#"version: 1
name: reply
inputs:
  ticket: { type: string }
  account: { type: string, sensitivity: confidential }
steps:
  public_reply:
    task: write
    prompt: "Reply to: {{ inputs.ticket }}"
  private_note:
    task: write
    prompt: "Note for {{ inputs.account }}: {{ inputs.ticket }}"
"#;
    let suite = r#"workflow: ../wf.yaml
policy: ../policy.yaml
defaults:
  inputs: { account: "ACME-42" }
cases:
  - name: polite
    inputs: { ticket: "Good customer: it crashed." }
    expect:
      public_reply: { judge: "The reply apologises to the customer." }
      private_note: { judge: "The note apologises." }
  - name: curt
    inputs: { ticket: "It crashed." }
    expect:
      public_reply: { judge: "The reply apologises to the customer." }
"#;
    let s = suite_project(&policy(&fake), wf, suite);
    let out = s.tollgate(&["test", "--format", "json"]).keys().await;
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let cases = r["suites"][0]["cases"].as_array().unwrap();
    assert_eq!(cases[0]["outcome"], "passed");
    assert_eq!(cases[1]["outcome"], "failed");
    let f = &cases[1]["runs"][0]["failures"][0];
    assert_eq!(f["assertion"], "judge");
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains("does not apologise"),
        "{f}"
    );
    assert!(cases[1]["runs"][0]["judge_cost_usd"].as_f64().unwrap() > 0.0);

    // The judge of the confidential note went to the local model only.
    let judged: Vec<String> = fake
        .requests()
        .iter()
        .filter(|q| q.raw_body.contains("You grade an answer"))
        .map(|q| {
            format!(
                "{}:{}",
                q.model(),
                q.raw_body.contains("The note apologises")
            )
        })
        .collect();
    assert_eq!(judged.len(), 3);
    assert!(judged.contains(&"local-llm:true".to_owned()), "{judged:?}");
    assert_eq!(
        judged
            .iter()
            .filter(|j| j.starts_with("claude-sonnet-4-6:false"))
            .count(),
        2,
        "{judged:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeats_pass_at_the_threshold_and_name_flaky_cases() {
    let fake = FakeServer::start().await;
    let n = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&n);
    // Every fifth classification goes wrong.
    fake.set_handler(move |r| {
        if r.raw_body.contains("Label as") {
            let i = counter.fetch_add(1, Ordering::SeqCst);
            Reply::text(if i % 5 == 4 { "feature" } else { "bug" }).usage(20, 1)
        } else {
            Reply::text("Summary.").usage(30, 2)
        }
    });
    let suite = r#"workflow: ../wf.yaml
policy: ../policy.yaml
pass_threshold: 0.8
cases:
  - name: crash
    inputs: { ticket: "It crashes." }
    expect: { classify: { equals: bug } }
"#;
    let s = suite_project(&policy(&fake), WORKFLOW, suite);
    let out = s
        .tollgate(&["test", "--repeat", "5", "--concurrency", "1"])
        .keys()
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let text = stdout(&out);
    assert!(text.contains("4/5 runs passed (flaky)"), "{text}");
    assert!(
        text.contains("1 passed, 0 failed, 0 errored, 1 flaky of 1 cases"),
        "{text}"
    );

    s.write(
        "evals/triage.yaml",
        &suite.replace("pass_threshold: 0.8", "pass_threshold: 1"),
    );
    let out = s
        .tollgate(&["test", "--repeat", "5", "--concurrency", "1"])
        .keys()
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    assert!(
        stdout(&out).contains("FAILED crash"),
        "{}",
        transcript(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_split_the_cases_and_merge_into_the_unsharded_results() {
    let fake = FakeServer::start().await;
    fake.set_handler(answer);
    let mut suite = String::from(
        "workflow: ../wf.yaml\npolicy: ../policy.yaml\ncases_from: [cases.jsonl, more.csv]\n",
    );
    suite.push_str("cases:\n  - name: inline\n    inputs: { ticket: \"It crashes.\" }\n    expect: { classify: { equals: bug } }\n");
    let s = suite_project(&policy(&fake), WORKFLOW, &suite);
    let mut jsonl = String::new();
    for i in 0..8 {
        let (ticket, label) = if i % 2 == 0 {
            ("It crashes", "bug")
        } else {
            ("Add themes", "feature")
        };
        jsonl.push_str(&format!(
            "{{\"name\": \"j{i}\", \"inputs\": {{\"ticket\": \"{ticket} #{i}\"}}, \"expect\": {{\"classify\": {{\"equals\": \"{label}\"}}}}}}\n"
        ));
    }
    s.write("evals/cases.jsonl", &jsonl);
    // One case is meant to fail, so the merge carries a failure through.
    s.write(
        "evals/more.csv",
        "name,ticket,expect.classify.equals,expect.summarize.max_tokens\nc1,It freezes,bug,50\nc2,Add sync,feature,50\nc3,Add sync,bug,50\n",
    );
    let out = s.tollgate(&["test", "--record"]).keys().await;
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    assert!(
        stdout(&out).contains("11 passed, 1 failed"),
        "{}",
        transcript(&out)
    );

    let out = s
        .tollgate_env(
            &[
                "test",
                "--replay",
                "--results",
                "all.json",
                "--junit",
                "all.xml",
            ],
            &[],
        )
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let mut seen = Vec::new();
    for k in 1..=3 {
        let shard = format!("{k}/3");
        let file = format!("shard-{k}.json");
        let out = s
            .tollgate_env(
                &["test", "--replay", "--shard", &shard, "--results", &file],
                &[],
            )
            .await;
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "{}",
            transcript(&out)
        );
        let r = results(&s, &file);
        for c in r["suites"][0]["cases"].as_array().unwrap() {
            seen.push(c["name"].as_str().unwrap().to_owned());
        }
    }
    seen.sort();
    let mut all: Vec<String> = results(&s, "all.json")["suites"][0]["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    all.sort();
    assert_eq!(seen, all, "every case in exactly one shard");

    let out = s
        .tollgate_env(
            &[
                "merge",
                "shard-1.json",
                "shard-2.json",
                "shard-3.json",
                "--results",
                "merged.json",
                "--junit",
                "merged.xml",
            ],
            &[],
        )
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    assert_eq!(results(&s, "merged.json"), results(&s, "all.json"));
    let untimed = |x: String| {
        regex::Regex::new(r#" time="[^"]*""#)
            .unwrap()
            .replace_all(&x, "")
            .into_owned()
    };
    assert_eq!(untimed(s.read("merged.xml")), untimed(s.read("all.xml")));

    // A lost shard is not a green run.
    let out = s
        .tollgate_env(&["merge", "shard-1.json", "shard-3.json"], &[])
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("shard 2/3 is missing"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_errors_are_errors_not_failures_and_keys_stay_secret() {
    let fake = FakeServer::start().await;
    fake.set_handler(|r| {
        if r.model() == "claude-sonnet-4-6" {
            Reply::auth_error()
        } else {
            answer(r)
        }
    });
    let suite = basic_without_snapshots();
    let s = suite_project(&policy(&fake), WORKFLOW, &suite);
    let out = s.tollgate(&["test", "--junit", "j.xml"]).keys().await;
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let text = transcript(&out);
    assert!(text.contains("0 passed, 0 failed, 2 errored"), "{text}");
    assert!(!text.contains(KEY) && !s.read("j.xml").contains(KEY));

    // Live mode needs the keys, and says so before calling anything.
    let before = fake.request_count();
    let out = s.tollgate_env(&["test"], &[("TEST_OPENAI_KEY", KEY)]).await;
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("TEST_ANTHROPIC_KEY is not set"));
    assert_eq!(fake.request_count(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_suite_is_reported_at_its_lines_and_nothing_runs() {
    let fake = FakeServer::start().await;
    fake.set_handler(answer);
    let suite = r#"workflow: ../wf.yaml
policy: ../policy.yaml
cases:
  - name: one
    inputs: { tikcet: "x" }
    expect:
      clasify: { equals: bug }
  - name: one
    inputs: { ticket: "x" }
    expect:
      summarize: { regex: "(unclosed" }
"#;
    let s = suite_project(&policy(&fake), WORKFLOW, suite);
    let out = s.tollgate(&["test"]).keys().await;
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "evals/triage.yaml:5:23",
        "the workflow `triage` has no input `tikcet`",
        "did you mean `ticket`?",
        "evals/triage.yaml:7:7",
        "has no step `clasify`",
        "did you mean `classify`?",
        "two cases are named `one`",
        "evals/triage.yaml:11:27",
        "this regular expression does not compile",
        "missing required input `ticket`",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    assert_eq!(fake.request_count(), 0);
}

/// The repository's own suites (evals/) pass offline from their committed
/// recordings, sharded and merged as examples/ci/tollgate-evals.yml does.
#[test]
fn the_example_suites_pass_offline_sharded_and_merged() {
    let dir = tempfile::tempdir().unwrap();
    let file = |k: usize| {
        dir.path()
            .join(format!("shard-{k}.json"))
            .display()
            .to_string()
    };
    for k in 1..=2 {
        let out = crate::support::tollgate(&[
            "test",
            "evals",
            "--replay",
            "--ci",
            "--quiet",
            "--shard",
            &format!("{k}/2"),
            "--results",
            &file(k),
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    }
    let junit = dir.path().join("junit.xml").display().to_string();
    let out = crate::support::tollgate(&["merge", &file(1), &file(2), "--junit", &junit]);
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let text = stdout(&out);
    let suites = std::fs::read_dir(crate::support::root().join("evals"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "yaml")
        })
        .count();
    assert!(suites >= 5, "{suites}");
    assert_eq!(
        text.matches("\nsuite ").count() + usize::from(text.starts_with("suite ")),
        suites,
        "{text}"
    );
    assert!(text.contains("0 failed, 0 errored"), "{text}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("failures=\"0\"") && xml.contains("errors=\"0\""),
        "{xml}"
    );
    // Nothing was written next to the suites.
    let pending = walk(&crate::support::root().join("evals"))
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".snap.new"))
        .count();
    assert_eq!(pending, 0);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_recording_adds_answers_and_a_complete_one_drops_stale_ones() {
    let fake = FakeServer::start().await;
    fake.set_handler(answer);
    let suite = basic_without_snapshots();
    let s = suite_project(&policy(&fake), WORKFLOW, &suite);
    let keys = |s: &Project| -> usize {
        let c: Value = serde_json::from_str(&s.read("evals/cassettes/triage.json")).unwrap();
        c["interactions"].as_array().unwrap().len()
    };
    let out = s.tollgate(&["test", "--record"]).keys().await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    assert_eq!(keys(&s), 4);

    // One case's ticket changes; only that case is recorded again.
    s.write(
        "evals/triage.yaml",
        &suite.replace("Please add a dark mode.", "Please add a dark theme."),
    );
    let out = s
        .tollgate(&["test", "--record", "--filter", "dark"])
        .keys()
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    assert_eq!(
        keys(&s),
        6,
        "a partial recording keeps what it did not replace"
    );

    // A complete recording leaves only what the suite asks now.
    let out = s.tollgate(&["test", "--record"]).keys().await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    assert_eq!(keys(&s), 4);
    let out = s.tollgate_env(&["test", "--replay", "--ci"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_test_run_with_its_summary_and_exit_130() {
    let fake = FakeServer::start().await;
    fake.set_default(
        Reply::text("bug")
            .usage(20, 1)
            .delay(Duration::from_secs(30)),
    );
    let suite = basic_without_snapshots();
    let s = suite_project(&policy(&fake), WORKFLOW, &suite);
    let child = s
        .tollgate(&["test", "--junit", "j.xml"])
        .keys()
        .into_tokio()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut waited = 0;
    while fake.request_count() == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += 1;
        assert!(waited < 1500, "no call was made");
    }
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("the test run stops promptly")
        .unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", transcript(&out));
    let text = stdout(&out);
    assert!(text.contains("0 passed, 0 failed, 2 errored"), "{text}");
    assert!(s.read("j.xml").contains("errors=\"2\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_suites_are_journaled_and_held_to_the_daily_budget() {
    let fake = FakeServer::start().await;
    fake.set_handler(answer);
    let suite = basic_without_snapshots();
    let s = suite_project(&policy(&fake), WORKFLOW, &suite);
    let out = s.tollgate(&["test"]).keys().await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    // Each case ran as a journaled run, and its spend is reported.
    let runs = s.tollgate(&["runs", "--format", "json"]).keys().await;
    let runs: Value = serde_json::from_slice(&runs.stdout).unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 2, "{runs}");
    assert!(
        runs.as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "succeeded")
    );
    let report = s.tollgate(&["report", "--format", "json"]).keys().await;
    let report: Value = serde_json::from_slice(&report.stdout).unwrap();
    assert!(
        report["totals"]["cost_usd"].as_f64().unwrap() > 0.0,
        "{report}"
    );

    // Today's spend now leaves no room under a daily budget: no call is made.
    let spent = fake.request_count();
    s.write(
        "policy.yaml",
        &format!("{}budgets:\n  daily_usd: 0.0001\n", policy(&fake)),
    );
    let out = s.tollgate(&["test"]).keys().await;
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    assert_eq!(
        fake.request_count(),
        spent,
        "a call crossed the daily budget"
    );
    let text = stdout(&out);
    assert!(text.contains("0 passed, 0 failed, 2 errored"), "{text}");
    assert!(text.contains("daily budget"), "{text}");
}

/// A suite keeps no compiled cases: they are compiled again from the files
/// as the runs need them. A case file changed after the check pass is not
/// run as if nothing happened: the cases read before the change run, and
/// the suite errors naming the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_case_file_changed_while_the_suite_runs_is_an_error_not_a_silent_run() {
    let fake = FakeServer::start().await;
    let s = suite_project(
        &policy(&fake),
        WORKFLOW,
        "workflow: ../wf.yaml\npolicy: ../policy.yaml\ncases_from: [first.jsonl, second.jsonl]\n",
    );
    let line = |name: &str| {
        format!(
            "{{\"name\": \"{name}\", \"inputs\": {{\"ticket\": \"It crashes\"}}, \"expect\": {{\"classify\": {{\"equals\": \"bug\"}}}}}}\n"
        )
    };
    let first: String = (0..12).map(|i| line(&format!("a{i}"))).collect();
    s.write("evals/first.jsonl", &first);
    s.write("evals/second.jsonl", &line("b0"));
    // The first answer rewrites the second file: by then the check pass is
    // over, and the runner is still in the first file (a few cases ahead
    // at most), so it reads the second one only after the change.
    let second = s.path().join("evals/second.jsonl");
    fake.set_handler(move |r| {
        let _ = std::fs::write(&second, "{\"name\": \"b0\", \"inputs\": {}}\nnot json\n");
        answer(r)
    });
    let out = s.tollgate(&["test", "--concurrency", "1"]).keys().await;
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let text = stdout(&out);
    assert!(text.contains("12 passed"), "{}", transcript(&out));
    assert!(
        text.contains("changed while it ran"),
        "{}",
        transcript(&out)
    );
}

const CLASSIFY_ONLY: &str = r#"version: 1
name: triage
inputs:
  ticket: { type: string }
steps:
  classify:
    task: classify
    prompt: "Label as bug or feature: {{ inputs.ticket }}"
    max_output_tokens: 5
"#;

/// A suite of `n` cases in a JSONL file, every case expecting `bug`: the
/// crashes (every third case) pass, the others fail.
fn many_cases_project(fake: &FakeServer, n: usize) -> Project {
    let cases: String = (0..n)
        .map(|i| {
            let ticket = if i % 3 == 0 {
                format!("It crashes on file {i}.")
            } else {
                format!("Please add option {i}.")
            };
            format!(
                "{{\"name\": \"case-{i:05}\", \"inputs\": {{\"ticket\": \"{ticket}\"}}, \"expect\": {{\"classify\": {{\"equals\": \"bug\"}}}}}}\n"
            )
        })
        .collect();
    suite_project(
        &policy(fake),
        CLASSIFY_ONLY,
        "workflow: ../wf.yaml\npolicy: ../policy.yaml\ncases_from: cases.jsonl\n",
    )
    .with("evals/cases.jsonl", &cases)
}

/// The case names a report lists, in its order, found by `marker`.
fn names_after<'a>(text: &'a str, marker: &str) -> Vec<&'a str> {
    text.match_indices(marker)
        .filter_map(|(at, _)| text[at + marker.len()..].split(['"', ' ']).next())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_suite_reports_every_case_once_in_suite_order() {
    // Cases finish out of order (16 at once); the case records go to a
    // temporary file and every report reads them back in suite order.
    let n = 1500;
    let fake = FakeServer::start().await;
    fake.set_handler(answer);
    let s = many_cases_project(&fake, n);
    let out = s
        .tollgate(&[
            "test",
            "--record",
            "--ci",
            "-q",
            "--junit",
            "j.xml",
            "--results",
            "r.json",
            "--html",
            "r.html",
        ])
        .keys()
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let want: Vec<String> = (0..n).map(|i| format!("case-{i:05}")).collect();
    let failed = n - n.div_ceil(3);

    let r = results(&s, "r.json");
    let cases = r["suites"][0]["cases"].as_array().unwrap();
    let names: Vec<&str> = cases.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, want);
    for (i, c) in cases.iter().enumerate() {
        assert_eq!(c["index"], i);
        let outcome = if i % 3 == 0 { "passed" } else { "failed" };
        assert_eq!(c["outcome"], outcome, "{c}");
    }

    let junit = s.read("j.xml");
    assert_eq!(names_after(&junit, "<testcase name=\""), want);
    assert!(
        junit.contains(&format!(
            "<testsuite name=\"triage\" tests=\"{n}\" skipped=\"0\" errors=\"0\" failures=\"{failed}\">"
        )),
        "{}",
        &junit[..400]
    );
    assert_eq!(junit.matches("<failure message=").count(), failed);

    let text = stdout(&out);
    let listed: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("  ok     ").or(l.strip_prefix("  FAILED ")))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(listed, want, "{text}");
    assert!(
        text.contains(&format!(
            "test result: FAILED. {} passed, {failed} failed, 0 errored of {n} cases; {n} calls",
            n - failed
        )),
        "{text}"
    );

    let html = s.read("r.html");
    assert!(
        html.contains(&format!(
            "<td>{n}</td><td>{}</td><td>{failed}</td>",
            n - failed
        )),
        "the suite row counts every case"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_that_cannot_be_saved_errors_every_case_in_order() {
    let fake = FakeServer::start().await;
    fake.set_handler(answer);
    let n = 40;
    let s = many_cases_project(&fake, n);
    // The cassettes folder is a link to nowhere: nothing to replay from,
    // and the recording cannot be written.
    std::os::unix::fs::symlink(
        s.path().join("no-such-folder"),
        s.path().join("evals/cassettes"),
    )
    .unwrap();
    let out = s
        .tollgate(&["test", "--record", "--ci", "--results", "r.json"])
        .keys()
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let r = results(&s, "r.json");
    let cases = r["suites"][0]["cases"].as_array().unwrap();
    assert_eq!(cases.len(), n);
    for (i, c) in cases.iter().enumerate() {
        assert_eq!(c["name"], format!("case-{i:05}"));
        assert_eq!(c["outcome"], "errored", "{c}");
        let error = c["runs"][0]["error"].as_str().unwrap();
        assert!(
            error.starts_with("cannot write the recordings to "),
            "{error}"
        );
    }
    assert!(
        stdout(&out).contains(&format!("0 passed, 0 failed, {n} errored of {n} cases")),
        "{}",
        transcript(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jsonl_case_file_read_line_by_line_locates_its_bad_lines() {
    // The file is read line by line (never whole); a bad line is still
    // shown in place, CRLF endings count as line ends, and bytes that are
    // not UTF-8 are one error naming the file.
    let fake = FakeServer::start().await;
    fake.set_handler(answer);
    let good = |n: &str| {
        format!(
            "{{\"name\": \"{n}\", \"inputs\": {{\"ticket\": \"It crashes.\"}}, \"expect\": {{\"classify\": {{\"equals\": \"bug\"}}}}}}"
        )
    };
    let s = suite_project(
        &policy(&fake),
        CLASSIFY_ONLY,
        "workflow: ../wf.yaml\npolicy: ../policy.yaml\ncases_from: cases.jsonl\n",
    )
    .with(
        "evals/cases.jsonl",
        &format!(
            "{}\r\n\r\n{}\r\n{{\"name\": \"broken\", oops}}\r\n{{\"name\": \"no-inputs\", \"inputs\": 3}}\n",
            good("a"),
            good("b")
        ),
    );
    let out = s.tollgate(&["test", "--replay"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "line 4 is not JSON",
        "evals/cases.jsonl:4:",
        "evals/cases.jsonl:5:",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }

    let mut bytes = format!("{}\n", good("a")).into_bytes();
    bytes.extend_from_slice(b"{\"name\": \"\xff\"}\n");
    std::fs::write(s.path().join("evals/cases.jsonl"), bytes).unwrap();
    let out = s.tollgate(&["test", "--replay"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read `"), "{err}");
    assert!(err.contains("cases.jsonl"), "{err}");
    assert_eq!(fake.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_case_file_read_record_by_record_reports_every_bad_row() {
    // The file is parsed record by record (a quoted cell may span lines),
    // never read whole: every bad row is reported with its row number, the
    // good ones around it are checked too, and nothing runs.
    let fake = FakeServer::start().await;
    fake.set_handler(answer);
    let s = suite_project(
        &policy(&fake),
        CLASSIFY_ONLY,
        "workflow: ../wf.yaml\npolicy: ../policy.yaml\ncases_from: cases.csv\n",
    )
    .with(
        "evals/cases.csv",
        "name,ticket,pass_threshold,expect.classify.equals\n\
         a,\"It crashes\non two lines.\",,bug\n\
         b,It crashes.,lots,bug\n\
         c,It crashes.\n\
         d,It crashes.,,bug\n\
         e,It crashes.,2,bug\n",
    );
    let out = s.tollgate(&["test", "--replay"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "cases.csv:3: pass_threshold `lots` is not a number",
        "cases.csv:4: CSV error",
        "found record",
        "cases.csv:6:",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    for not in ["cases.csv:2", "cases.csv:5"] {
        assert!(!err.contains(not), "{not:?} is a good row:\n{err}");
    }

    // Bytes that are not UTF-8 are that row's error; the rows after it
    // are still read.
    let mut bytes =
        b"name,ticket,expect.classify.equals\na,\xff,bug\nb,ok,bug\nc,ok,bug,extra\n".to_vec();
    bytes.extend_from_slice(b"d,ok,bug\n");
    std::fs::write(s.path().join("evals/cases.csv"), bytes).unwrap();
    let out = s.tollgate(&["test", "--replay"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cases.csv:2:"), "{err}");
    assert!(err.contains("cases.csv:4:"), "{err}");
    assert_eq!(fake.request_count(), 0);
}
