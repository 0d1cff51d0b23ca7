//! Batch mode end to end: `latency: batch` steps (and `run --batch`) go
//! through the fake's OpenAI Batch API and Anthropic Message Batches, are
//! priced at batch prices, fall back to synchronous calls item by item, and
//! resume polling after an interrupted run.

use std::time::Duration;

use fake_llm::{Api, BatchScript, FakeServer, Recorded, Reply};
use serde_json::json;

use crate::support::{KEY, Project, assert_no_key, policy, report, step, transcript};

/// Labels three tickets through the budget model (OpenAI gpt-4.1-nano) in
/// one batch; a summary step runs normally.
const LABELS: &str = r#"version: 1
name: labels
inputs:
  tickets: { type: array, default: ["App crashes on save", "Please add dark mode", "How do I export?"] }
steps:
  label:
    task: classify
    latency: batch
    for_each: inputs.tickets
    prompt: "Label this ticket: {{ item }}"
    max_output_tokens: 5
    output: { schema: { type: string, enum: [bug, feature, question] } }
  summary:
    task: summarize
    prompt: "Summarize: {% for l in steps.label.output %}{{ l }} {% endfor %}"
    max_output_tokens: 20
"#;

/// Answers by ticket, so a result mapped to the wrong item shows.
fn by_ticket(fake: &FakeServer) {
    fake.set_handler(|r: &Recorded| {
        let b = &r.raw_body;
        if b.contains("crashes") {
            Reply::text("bug").usage(20, 1)
        } else if b.contains("dark mode") {
            Reply::text("feature").usage(22, 1)
        } else if b.contains("export") {
            Reply::text("question").usage(24, 1)
        } else {
            Reply::text("3 tickets").usage(30, 3)
        }
    });
}

fn fast() -> [&'static str; 4] {
    ["--format", "json", "--batch-poll-interval", "10ms"]
}

/// Synchronous chat requests (not batch traffic) whose body contains `text`.
fn sync_calls(fake: &FakeServer, text: &str) -> usize {
    fake.requests()
        .iter()
        .filter(|r| matches!(r.api, Api::OpenAi | Api::Anthropic | Api::Gemini))
        .filter(|r| r.raw_body.contains(text))
        .count()
}

fn polls(fake: &FakeServer, path_part: &str) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains(path_part) && !r.path.contains("result"))
        .count()
}

/// A run that succeeded with every ticket labelled right (and in order:
/// a result mapped to the wrong item shows); its report.
fn labelled(out: &std::process::Output) -> serde_json::Value {
    assert_eq!(out.status.code(), Some(0), "{}", transcript(out));
    let r = report(out);
    assert_eq!(
        step(&r, "label")["output"],
        json!(["bug", "feature", "question"])
    );
    r
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_batch_is_submitted_once_polled_and_mapped_back_at_batch_prices() {
    let fake = FakeServer::start().await;
    by_ticket(&fake);
    fake.require_api_key(KEY);
    fake.set_batch_script(BatchScript {
        polls_before_done: 3,
        ..BatchScript::default()
    });
    let p = Project::new(&policy(&fake, ""), LABELS);
    let out = p.run(&fast()).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let r = report(&out);
    // Output files come back in reverse order: mapping is by custom id.
    assert_eq!(
        step(&r, "label")["output"],
        json!(["bug", "feature", "question"])
    );
    assert_eq!(fake.batches_created(), 1);
    assert_eq!(sync_calls(&fake, "Label this ticket"), 0);
    // The summary step was not a batch step.
    assert_eq!(sync_calls(&fake, "Summarize"), 1);
    // validating → in_progress ×2 → finalizing → completed: the client
    // polled until the end.
    assert!(
        polls(&fake, "/v1/batches/") >= 4,
        "{}",
        polls(&fake, "/v1/batches/")
    );

    // The upload: a JSONL file of chat requests, one per item.
    let upload = fake
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/files")
        .expect("an upload");
    assert!(
        upload
            .header("content-type")
            .unwrap()
            .starts_with("multipart/form-data")
    );
    assert!(upload.raw_body.contains("name=\"purpose\"\r\n\r\nbatch"));
    for n in 0..3 {
        assert!(
            upload
                .raw_body
                .contains(&format!("\"custom_id\":\"item-{n}\""))
        );
    }
    assert!(upload.raw_body.contains("\"url\":\"/v1/chat/completions\""));
    assert!(upload.raw_body.contains("\"stream\":false"));
    let create = fake
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/batches" && r.method == "POST")
        .unwrap();
    assert_eq!(create.body["endpoint"], "/v1/chat/completions");
    assert_eq!(create.body["completion_window"], "24h");

    // Batch prices: gpt-4.1-nano is $0.05 in / $0.20 out per Mtok in batches.
    let label = step(&r, "label");
    let calls = label["calls"].as_array().unwrap();
    for (call, (input, output)) in calls.iter().zip([(20.0, 1.0), (22.0, 1.0), (24.0, 1.0)]) {
        assert_eq!(call["batch"], true);
        let want = (input * 0.05 + output * 0.2) / 1e6;
        assert!(close(call["cost_usd"].as_f64().unwrap(), want), "{call}");
        let list = (input * 0.1 + output * 0.4) / 1e6;
        assert!(
            close(call["list_cost_usd"].as_f64().unwrap(), list),
            "{call}"
        );
    }
    let saving = r["saving_usd"].as_f64().unwrap();
    assert!(close(saving, (66.0 * 0.05 + 3.0 * 0.2) / 1e6), "{saving}");
    // The journal's entry for the batch is closed once the results are in.
    let ledger = open_batches(p.path());
    assert!(ledger.is_empty(), "{ledger:?}");
    assert_no_key(&out, &format!("{ledger:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_and_expired_openai_items_are_called_again_synchronously() {
    let fake = FakeServer::start().await;
    by_ticket(&fake);
    fake.set_batch_script(BatchScript {
        polls_before_done: 1,
        failed_ids: vec!["item-1".into()],
        expired_ids: vec!["item-2".into()],
        ..BatchScript::default()
    });
    let p = Project::new(&policy(&fake, ""), LABELS);
    let out = p.run(&fast()).await;
    let r = labelled(&out);
    assert_eq!(fake.batches_created(), 1);
    // Only the two failed items were called again, each once.
    assert_eq!(sync_calls(&fake, "Label this ticket"), 2);
    assert_eq!(sync_calls(&fake, "dark mode"), 1);
    assert_eq!(sync_calls(&fake, "export"), 1);
    let calls = step(&r, "label")["calls"].as_array().unwrap().clone();
    assert_eq!(calls[0]["batch"], true);
    assert!(close(
        calls[0]["cost_usd"].as_f64().unwrap(),
        (20.0 * 0.05 + 0.2) / 1e6
    ));
    // The batch attempt is listed first, then the synchronous answer at
    // the standard price.
    assert_eq!(calls[1]["batch"], false);
    assert_eq!(calls[1]["attempts"][0]["outcome"], "server");
    assert_eq!(calls[1]["attempts"][0]["status"], 500);
    assert_eq!(calls[1]["attempts"][1]["outcome"], "ok");
    assert!(close(
        calls[1]["cost_usd"].as_f64().unwrap(),
        (22.0 * 0.1 + 0.4) / 1e6
    ));
    assert_eq!(calls[2]["attempts"][0]["outcome"], "batch_expired");
    assert!(
        calls[2]["attempts"][0]["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_fails_validation_runs_every_item_synchronously() {
    let fake = FakeServer::start().await;
    by_ticket(&fake);
    fake.set_batch_script(BatchScript {
        fail_validation: true,
        ..BatchScript::default()
    });
    let p = Project::new(&policy(&fake, ""), LABELS);
    let out = p.run(&fast()).await;
    let r = labelled(&out);
    assert_eq!(sync_calls(&fake, "Label this ticket"), 3);
    let first = &step(&r, "label")["calls"][0]["attempts"][0];
    assert_eq!(first["outcome"], "batch_failed");
    assert!(
        first["message"].as_str().unwrap().contains("line 1"),
        "{first}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_batch_answer_is_asked_again_synchronously() {
    let fake = FakeServer::start().await;
    // The batch answers "maybe" for the first ticket (not in the enum);
    // the synchronous call gets it right.
    let batch_seen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = batch_seen.clone();
    fake.set_handler(move |r: &Recorded| {
        if r.raw_body.contains("crashes") && !seen.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Reply::text("maybe").usage(20, 1);
        }
        if r.raw_body.contains("crashes") {
            Reply::text("bug").usage(20, 1)
        } else if r.raw_body.contains("dark") {
            Reply::text("feature").usage(22, 1)
        } else if r.raw_body.contains("export") {
            Reply::text("question").usage(24, 1)
        } else {
            Reply::text("ok").usage(30, 3)
        }
    });
    let p = Project::new(&policy(&fake, ""), LABELS);
    let out = p.run(&fast()).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let r = report(&out);
    assert_eq!(step(&r, "label")["output"][0], "bug");
    let call = &step(&r, "label")["calls"][0];
    assert_eq!(call["attempts"][0]["outcome"], "invalid_output");
    // The rejected batch answer stays on the bill: batch + standard price.
    let want = (20.0 * 0.05 + 0.2 + 20.0 * 0.1 + 0.4) / 1e6;
    assert!(close(call["cost_usd"].as_f64().unwrap(), want), "{call}");
    assert_eq!(sync_calls(&fake, "crashes"), 1);
}

/// Two replies through the workhorse (Anthropic claude-sonnet-4-6), not a
/// `latency: batch` step: `run --batch` sends it through a batch anyway.
const REPLIES: &str = r#"version: 1
name: replies
inputs:
  names: { type: array, default: [Ada, Grace, Linus] }
steps:
  reply:
    task: write
    for_each: inputs.names
    prompt: "Write a thank-you note to {{ item }}"
    max_output_tokens: 50
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_batch_sends_anthropic_steps_through_message_batches() {
    let fake = FakeServer::start().await;
    fake.require_api_key(KEY);
    fake.set_handler(|r: &Recorded| {
        let name = ["Ada", "Grace", "Linus"]
            .into_iter()
            .find(|n| r.raw_body.contains(n))
            .unwrap_or("?");
        Reply::text(format!("Thank you, {name}!")).usage(100, 10)
    });
    fake.set_batch_script(BatchScript {
        polls_before_done: 2,
        failed_ids: vec!["item-2".into()],
        ..BatchScript::default()
    });
    let p = Project::new(&policy(&fake, ""), REPLIES);
    let mut args = fast().to_vec();
    args.push("--batch");
    let out = p.run(&args).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let r = report(&out);
    assert_eq!(
        step(&r, "reply")["output"],
        json!(["Thank you, Ada!", "Thank you, Grace!", "Thank you, Linus!"])
    );
    assert_eq!(fake.batches_created(), 1);
    let create = fake
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/messages/batches")
        .unwrap();
    assert_eq!(create.header("anthropic-version"), Some("2023-06-01"));
    let requests = create.body["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[1]["custom_id"], "item-1");
    assert_eq!(requests[1]["params"]["model"], "claude-sonnet-4-6");
    assert_eq!(requests[1]["params"]["stream"], false);
    assert!(polls(&fake, "/v1/messages/batches/") >= 3);
    // The errored item was called again, synchronously.
    assert_eq!(sync_calls(&fake, "Linus"), 1);
    assert_eq!(sync_calls(&fake, "Ada"), 0);
    // claude-sonnet-4-6 in batches: $1.50 in / $7.50 out per Mtok.
    let calls = step(&r, "reply")["calls"].as_array().unwrap().clone();
    let batch_cost = (100.0 * 1.5 + 10.0 * 7.5) / 1e6;
    for call in &calls[..2] {
        assert_eq!(call["batch"], true);
        assert!(
            close(call["cost_usd"].as_f64().unwrap(), batch_cost),
            "{call}"
        );
    }
    assert_eq!(calls[2]["attempts"][0]["outcome"], "server");
    assert!(close(
        calls[2]["cost_usd"].as_f64().unwrap(),
        (100.0 * 3.0 + 10.0 * 15.0) / 1e6
    ));

    // The text summary says how many calls were batched (past the response
    // cache, which would answer them all now).
    let out = p
        .run(&["--batch", "--batch-poll-interval", "10ms", "--no-cache"])
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("2 call(s) at batch prices"), "{stderr}");
    assert!(
        stderr.contains("batch  reply: anthropic batch msgbatch_"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_anthropic_items_run_synchronously() {
    let fake = FakeServer::start().await;
    fake.set_default(Reply::text("Thanks!").usage(100, 10));
    fake.set_batch_script(BatchScript {
        polls_before_done: 0,
        expired_ids: vec!["item-0".into(), "item-1".into()],
        ..BatchScript::default()
    });
    let p = Project::new(&policy(&fake, ""), REPLIES);
    let mut args = fast().to_vec();
    args.push("--batch");
    let out = p.run(&args).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let r = report(&out);
    let calls = step(&r, "reply")["calls"].as_array().unwrap().clone();
    assert_eq!(calls[0]["attempts"][0]["outcome"], "batch_expired");
    assert_eq!(calls[1]["attempts"][0]["outcome"], "batch_expired");
    assert_eq!(calls[2]["batch"], true);
    assert_eq!(sync_calls(&fake, "thank-you"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_steps_on_providers_without_a_batch_api_run_normally() {
    let fake = FakeServer::start().await;
    fake.set_default(Reply::text("done").usage(10, 2));
    let wf = r#"version: 1
name: no-batch-api
inputs:
  logs: { type: string, sensitivity: confidential, default: "x" }
steps:
  deep:
    task: debug
    reasoning: deep
    latency: batch
    prompt: "Think hard."
  local:
    task: debug
    latency: batch
    prompt: "Logs: {{ inputs.logs }}"
"#;
    let p = Project::new(&policy(&fake, ""), wf);
    let out = p.run(&fast()).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let r = report(&out);
    assert_eq!(step(&r, "deep")["model"], "flagship");
    assert_eq!(step(&r, "local")["model"], "local");
    assert_eq!(fake.batches_created(), 0);
    assert_eq!(sync_calls(&fake, "Think hard"), 1);
    assert_eq!(step(&r, "deep")["calls"][0]["batch"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_run_resumes_polling_its_batch_instead_of_resubmitting() {
    let fake = FakeServer::start().await;
    by_ticket(&fake);
    // The batch never ends while the first run is alive.
    fake.set_batch_script(BatchScript {
        polls_before_done: u32::MAX,
        ..BatchScript::default()
    });
    let p = Project::new(&policy(&fake, ""), LABELS);
    let mut child = p
        .run(&fast())
        .into_tokio()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Wait until the batch is created and being polled (it was recorded
    // before the first poll), then kill the run without warning.
    let mut waited = 0;
    while polls(&fake, "/v1/batches/") < 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += 1;
        assert!(waited < 3000, "the run never polled its batch");
    }
    child.kill().await.unwrap();
    let entries = open_batches(p.path());
    assert_eq!(entries.len(), 1, "{entries:?}");
    let batch_id = entries[0].clone();
    assert!(batch_id.starts_with("batch_"));
    assert_eq!(fake.batches_created(), 1);

    // The provider finishes the batch meanwhile; the rerun picks it up.
    fake.complete_batches();
    // (A batch submitted again would end at once, and fail the count below.)
    fake.set_batch_script(BatchScript {
        polls_before_done: 0,
        ..BatchScript::default()
    });
    let uploads_before = fake
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/files")
        .count();
    let out = p.run(&fast()).await;
    let r = labelled(&out);
    assert_eq!(fake.batches_created(), 1, "the batch was submitted again");
    assert_eq!(
        fake.requests()
            .iter()
            .filter(|r| r.path == "/v1/files")
            .count(),
        uploads_before
    );
    assert_eq!(sync_calls(&fake, "Label this ticket"), 0);
    assert!(
        step(&r, "label")["calls"][0]["attempts"][0]["message"]
            .as_str()
            .unwrap()
            .contains(&batch_id)
    );
    // Its results were fetched, so nothing is left to resume.
    assert!(open_batches(p.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_answers_are_journaled_so_a_resume_never_pays_for_them_again() {
    let fake = FakeServer::start().await;
    // The summary's provider refuses the first run's call for good.
    fake.set_handler(|r: &Recorded| {
        if r.raw_body.contains("Summarize") {
            Reply::auth_error()
        } else if r.raw_body.contains("crashes") {
            Reply::text("bug").usage(20, 1)
        } else if r.raw_body.contains("dark mode") {
            Reply::text("feature").usage(22, 1)
        } else {
            Reply::text("question").usage(24, 1)
        }
    });
    let p = Project::new(&policy(&fake, ""), LABELS);
    let out = p.run(&fast()).await;
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    assert_eq!(fake.batches_created(), 1);
    let run_id = report(&out)["run_id"].as_str().unwrap().to_owned();

    by_ticket(&fake);
    let out = p
        .run(&["--resume", &run_id, "--format", "json", "--no-cache"])
        .await;
    let r = labelled(&out);
    assert_eq!(fake.batches_created(), 1, "the batch was submitted again");
    assert_eq!(sync_calls(&fake, "Label this ticket"), 0);
    assert_eq!(step(&r, "summary")["output"], "3 tickets");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_results_cannot_be_fetched_is_kept_for_a_resume_not_bought_again() {
    let fake = FakeServer::start().await;
    by_ticket(&fake);
    fake.set_batch_download_status(Some(503));
    let p = Project::new(&policy(&fake, ""), LABELS);
    let out = p.run(&fast()).await;
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let r = report(&out);
    let label = step(&r, "label");
    assert_eq!(label["status"], "failed");
    assert!(
        label["detail"]
            .as_str()
            .unwrap()
            .contains("tollgate run --resume"),
        "{label}"
    );
    // Not one answer bought again synchronously; the batch is kept.
    assert_eq!(sync_calls(&fake, "Label this ticket"), 0);
    assert_eq!(open_batches(p.path()).len(), 1);
    let run_id = r["run_id"].as_str().unwrap().to_owned();

    // The provider recovers; the resume collects the same batch.
    fake.set_batch_download_status(None);
    let out = p
        .run(&[
            "--resume",
            &run_id,
            "--format",
            "json",
            "--batch-poll-interval",
            "10ms",
        ])
        .await;
    labelled(&out);
    assert_eq!(fake.batches_created(), 1, "the batch was bought twice");
    assert_eq!(sync_calls(&fake, "Label this ticket"), 0);
    assert!(open_batches(p.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_of_a_batch_step_is_answered_from_the_cache_without_a_batch() {
    let fake = FakeServer::start().await;
    by_ticket(&fake);
    let p = Project::new(&policy(&fake, ""), LABELS);
    let out = p.run(&fast()).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    assert_eq!(fake.batches_created(), 1);
    let out = p.run(&fast()).await;
    let r = labelled(&out);
    assert_eq!(
        fake.batches_created(),
        1,
        "a cached batch step was bought again"
    );
    for call in step(&r, "label")["calls"].as_array().unwrap() {
        assert_eq!(call["source"], "cache", "{call}");
        assert_eq!(call["cost_usd"], 0.0);
    }
}

// ---------------------------------------------------------------------------
// Steps larger than one batch: split into batches the provider takes.

/// Labels `n` tickets in one batch step (no output schema: each answer is
/// the text the fake gives for its ticket).
fn many_tickets(n: usize) -> String {
    let tickets: Vec<String> = (0..n).map(|i| format!("\"ticket {i}\"")).collect();
    format!(
        r#"version: 1
name: many
inputs:
  tickets: {{ type: array, default: [{}] }}
steps:
  label:
    task: classify
    latency: batch
    for_each: inputs.tickets
    prompt: "Label this ticket: {{{{ item }}}}"
    max_output_tokens: 5
"#,
        tickets.join(", ")
    )
}

/// Answers `label <n>` for `ticket <n>`: an answer mapped to the wrong item
/// shows.
fn by_number(fake: &FakeServer) {
    fake.set_handler(|r: &Recorded| {
        let n = r
            .raw_body
            .split("ticket ")
            .nth(1)
            .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
            .unwrap_or("?")
            .to_owned();
        Reply::text(format!("label {n}")).usage(20, 2)
    });
}

fn labels(n: usize) -> serde_json::Value {
    json!((0..n).map(|i| format!("label {i}")).collect::<Vec<_>>())
}

/// The policy with OpenAI's batches held to 50 requests.
fn fifty_per_batch(fake: &FakeServer) -> String {
    policy(fake, "").replace(
        "api_key_env: TEST_OPENAI_KEY }",
        "api_key_env: TEST_OPENAI_KEY, batch: { max_requests: 50 } }",
    )
}

/// The fake's OpenAI takes at most 50 requests a batch.
fn fake_takes_fifty(fake: &FakeServer, polls_before_done: u32) {
    fake.set_batch_script(BatchScript {
        polls_before_done,
        max_requests: Some(50),
        ..BatchScript::default()
    });
}

/// The item numbers of each OpenAI batch uploaded, by first item (two
/// batches in flight may arrive in either order).
fn uploaded_ids(fake: &FakeServer) -> Vec<Vec<usize>> {
    let mut batches: Vec<Vec<usize>> = fake
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/files")
        .map(|r| {
            r.raw_body
                .split("\"custom_id\":\"item-")
                .skip(1)
                .map(|t| t.split('"').next().unwrap().parse().unwrap())
                .collect()
        })
        .collect();
    batches.sort();
    batches
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_larger_than_a_batch_is_split_into_batches_the_provider_takes() {
    let fake = FakeServer::start().await;
    by_number(&fake);
    fake_takes_fifty(&fake, 1);
    let p = Project::new(&fifty_per_batch(&fake), &many_tickets(120));
    let out = p.run(&fast()).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let r = report(&out);
    // Every item answered once, in item order, by a batch.
    assert_eq!(step(&r, "label")["output"], labels(120));
    assert_eq!(fake.batches_created(), 3);
    assert_eq!(sync_calls(&fake, "Label this ticket"), 0);
    // Consecutive batches of 50, 50 and 20, each item in exactly one.
    let batches = uploaded_ids(&fake);
    let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
    assert_eq!(sizes, [50, 50, 20]);
    let mut all: Vec<usize> = batches.into_iter().flatten().collect();
    all.sort_unstable();
    assert_eq!(all, (0..120).collect::<Vec<_>>());
    // At batch prices: gpt-4.1-nano is $0.05 in / $0.20 out per Mtok.
    let calls = step(&r, "label")["calls"].as_array().unwrap().clone();
    assert_eq!(calls.len(), 120);
    for call in &calls {
        assert_eq!(call["batch"], true, "{call}");
        let want = (20.0 * 0.05 + 2.0 * 0.2) / 1e6;
        assert!(close(call["cost_usd"].as_f64().unwrap(), want), "{call}");
    }
    assert!(open_batches(p.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_refuses_a_batch_past_the_providers_limit_and_the_items_run_synchronously() {
    let fake = FakeServer::start().await;
    by_number(&fake);
    fake_takes_fifty(&fake, 1);
    // tollgate told nothing of the lower limit: one batch of 60, refused
    // whole (nothing billed), every item called synchronously.
    let p = Project::new(&policy(&fake, ""), &many_tickets(60));
    let out = p.run(&fast()).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let r = report(&out);
    assert_eq!(step(&r, "label")["output"], labels(60));
    assert_eq!(sync_calls(&fake, "Label this ticket"), 60);
    let first = &step(&r, "label")["calls"][0]["attempts"][0];
    assert_eq!(first["outcome"], "batch_failed", "{first}");
    assert!(
        first["message"].as_str().unwrap().contains("at most 50"),
        "{first}"
    );
    assert!(open_batches(p.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_batches_are_cut_at_the_byte_limit() {
    let fake = FakeServer::start().await;
    by_number(&fake);
    // Each request is a few hundred bytes: a 700-byte batch holds a few.
    const MAX: usize = 700;
    fake.set_batch_script(BatchScript {
        polls_before_done: 0,
        max_bytes: Some(MAX),
        ..BatchScript::default()
    });
    let policy = policy(&fake, "").replace(
        "api_key_env: TEST_ANTHROPIC_KEY }",
        &format!("api_key_env: TEST_ANTHROPIC_KEY, batch: {{ max_bytes: {MAX} }} }}"),
    );
    let wf = many_tickets(12).replace("task: classify", "task: write");
    let p = Project::new(&policy, &wf);
    let mut args = fast().to_vec();
    args.push("--batch");
    let out = p.run(&args).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let r = report(&out);
    assert_eq!(step(&r, "label")["output"], labels(12));
    assert_eq!(sync_calls(&fake, "Label this ticket"), 0);
    let mut creates: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1/messages/batches" && r.method == "POST")
        .collect();
    // Two batches in flight may arrive in either order.
    let first = |r: &Recorded| {
        r.body["requests"][0]["custom_id"].as_str().unwrap()[5..]
            .parse::<usize>()
            .unwrap()
    };
    creates.sort_by_key(first);
    assert!(creates.len() >= 3, "{}", creates.len());
    let mut next = 0;
    for c in &creates {
        assert!(c.raw_body.len() <= MAX, "{}", c.raw_body.len());
        // Consecutive items, in order.
        for r in c.body["requests"].as_array().unwrap() {
            assert_eq!(r["custom_id"], format!("item-{next}"));
            next += 1;
        }
    }
    assert_eq!(next, 12);
    for call in step(&r, "label")["calls"].as_array().unwrap() {
        assert_eq!(call["batch"], true, "{call}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_with_batches_in_flight_resumes_them_and_submits_only_the_rest() {
    let fake = FakeServer::start().await;
    by_number(&fake);
    // The batches never end while the first run is alive.
    fake_takes_fifty(&fake, u32::MAX);
    let p = Project::new(&fifty_per_batch(&fake), &many_tickets(120));
    let mut child = p
        .run(&fast())
        .into_tokio()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Wait until the first batches are submitted and each polled (each is
    // recorded before its first poll), then kill the run without warning.
    let polled = |fake: &FakeServer| {
        let mut ids: Vec<String> = fake
            .requests()
            .into_iter()
            .filter(|r| r.method == "GET" && r.path.starts_with("/v1/batches/"))
            .map(|r| r.path)
            .collect();
        ids.sort();
        ids.dedup();
        ids.len()
    };
    let mut waited = 0;
    while polled(&fake) < 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += 1;
        assert!(waited < 3000, "the run never polled its batches");
    }
    child.kill().await.unwrap();
    let entries = open_batches(p.path());
    // Two in flight at once: the third was not submitted yet.
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(fake.batches_created(), 2);

    // The provider finishes them meanwhile; the rerun collects both and
    // submits only the third.
    fake.complete_batches();
    fake_takes_fifty(&fake, 0);
    let out = p.run(&fast()).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let r = report(&out);
    assert_eq!(step(&r, "label")["output"], labels(120));
    assert_eq!(fake.batches_created(), 3, "a batch was submitted again");
    let sizes: Vec<usize> = uploaded_ids(&fake).iter().map(Vec::len).collect();
    assert_eq!(sizes, [50, 50, 20]);
    assert_eq!(sync_calls(&fake, "Label this ticket"), 0);
    let calls = step(&r, "label")["calls"].as_array().unwrap().clone();
    // Items of the first two batches were answered by the batches the
    // killed run submitted.
    for n in [0, 49, 50, 99] {
        let message = calls[n]["attempts"][0]["message"].as_str().unwrap();
        assert!(
            entries.iter().any(|b| message.contains(b.as_str())),
            "{message}"
        );
    }
    assert!(open_batches(p.path()).is_empty());
}

#[test]
fn batch_limits_past_the_providers_or_on_a_provider_without_batches_are_located_errors() {
    let fake_base = "http://127.0.0.1:9";
    let base = crate::support::team_policy(fake_base, "");
    let wrong = base
        .replace(
            "api_key_env: TEST_OPENAI_KEY }",
            "api_key_env: TEST_OPENAI_KEY, batch: { max_requests: 50001 } }",
        )
        .replace(
            "api_key_env: TEST_GEMINI_KEY }",
            "api_key_env: TEST_GEMINI_KEY, batch: { max_bytes: 10 } }",
        );
    let p = Project::new(&wrong, LABELS);
    let out = p.tollgate(&["check", "wf.yaml", "policy.yaml"]).output();
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`batch.max_requests` is 50001: openai takes 1 to 50000"),
        "{err}"
    );
    assert!(err.contains("policy.yaml:6:"), "{err}");
    assert!(
        err.contains("`batch` only applies to openai and anthropic providers, not gemini"),
        "{err}"
    );
    assert!(err.contains("policy.yaml:8:"), "{err}");
}

/// Batches the project's run journal holds as submitted and not fetched.
fn open_batches(project: &std::path::Path) -> Vec<String> {
    let db = rusqlite::Connection::open(project.join(".tollgate/state.db")).unwrap();
    let mut stmt = db
        .prepare("SELECT batch_id FROM batches WHERE finished_ms IS NULL ORDER BY batch_id")
        .unwrap();
    stmt.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

// ---------------------------------------------------------------------------
// The batch clients against the fakes' state machines, without the engine.

mod clients {
    use fake_llm::{BatchScript, FakeServer, Reply};
    use tollgate::policy::ProviderKind;
    use tollgate::provider::batch::{
        BatchApi, BatchItem, BatchState, ItemOutcome, batch_client_for,
    };
    use tollgate::provider::{ChatRequest, ClientConfig};

    const KEY: &str = "sk-batch-client-key";

    fn client(fake: &FakeServer, kind: ProviderKind) -> std::sync::Arc<dyn BatchApi> {
        let base = match kind {
            ProviderKind::Anthropic => fake.base_url(),
            _ => format!("{}/v1", fake.base_url()),
        };
        let http = tollgate::provider::Http::without_proxy(std::time::Duration::from_secs(2));
        batch_client_for(kind, ClientConfig::new(base).with_api_key(KEY), http).unwrap()
    }

    fn items(model: &str) -> Vec<BatchItem> {
        (0..3)
            .map(|n| BatchItem {
                custom_id: format!("req-{n}"),
                request: ChatRequest::new(model, format!("question {n}")),
            })
            .collect()
    }

    fn status(s: &BatchState) -> String {
        match s {
            BatchState::Running { status, .. } | BatchState::Ended { status } => status.clone(),
            BatchState::Failed { message } => format!("failed: {message}"),
        }
    }

    #[tokio::test]
    async fn openai_walks_validating_in_progress_finalizing_completed() {
        let fake = FakeServer::start().await;
        fake.require_api_key(KEY);
        fake.set_default(Reply::text("answer").usage(12, 3));
        fake.set_batch_script(BatchScript {
            polls_before_done: 3,
            ..BatchScript::default()
        });
        let api = client(&fake, ProviderKind::Openai);
        let id = api.submit(&items("gpt-4o-mini")).await.unwrap();
        assert!(id.starts_with("batch_"), "{id}");
        let mut seen = Vec::new();
        loop {
            let s = api.poll(&id).await.unwrap();
            seen.push(status(&s));
            if matches!(s, BatchState::Ended { .. }) {
                break;
            }
        }
        assert_eq!(
            seen,
            ["validating", "in_progress", "finalizing", "completed"]
        );
        let results = api.results(&id).await.unwrap();
        assert_eq!(results.len(), 3);
        for n in 0..3 {
            let ItemOutcome::Answer(a) = &results[&format!("req-{n}")] else {
                panic!("req-{n} has no answer");
            };
            assert_eq!(a.text, "answer");
            assert_eq!((a.usage.input_tokens, a.usage.output_tokens), (12, 3));
        }
    }

    #[tokio::test]
    async fn openai_cancel_ends_as_cancelled_with_every_item_cancelled() {
        let fake = FakeServer::start().await;
        fake.set_batch_script(BatchScript {
            polls_before_done: 100,
            ..BatchScript::default()
        });
        let api = client(&fake, ProviderKind::Openai);
        let id = api.submit(&items("gpt-4o-mini")).await.unwrap();
        assert_eq!(status(&api.poll(&id).await.unwrap()), "validating");
        assert_eq!(status(&api.poll(&id).await.unwrap()), "in_progress");
        let url = format!("{}/v1/batches/{id}/cancel", fake.base_url());
        let cancelled: serde_json::Value = reqwest::Client::new()
            .post(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(cancelled["status"], "cancelling");
        assert_eq!(status(&api.poll(&id).await.unwrap()), "cancelled");
        let results = api.results(&id).await.unwrap();
        assert!(results.values().all(|o| matches!(o, ItemOutcome::Canceled)));
    }

    #[tokio::test]
    async fn anthropic_walks_in_progress_to_ended_and_reports_each_result_type() {
        let fake = FakeServer::start().await;
        fake.require_api_key(KEY);
        fake.set_default(Reply::text("answer").usage(40, 4));
        fake.set_batch_script(BatchScript {
            polls_before_done: 2,
            failed_ids: vec!["req-1".into()],
            expired_ids: vec!["req-2".into()],
            ..BatchScript::default()
        });
        let api = client(&fake, ProviderKind::Anthropic);
        let id = api.submit(&items("claude-sonnet-4-6")).await.unwrap();
        assert!(id.starts_with("msgbatch_"), "{id}");
        let first = api.poll(&id).await.unwrap();
        assert_eq!(
            first,
            BatchState::Running {
                status: "in_progress".into(),
                done: 0,
                total: 3
            }
        );
        // results_url is null until the batch ends.
        let raw: serde_json::Value = reqwest::Client::new()
            .get(format!("{}/v1/messages/batches/{id}", fake.base_url()))
            .header("x-api-key", KEY)
            .header("anthropic-version", "2023-06-01")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(raw["results_url"].is_null(), "{raw}");
        assert_eq!(status(&api.poll(&id).await.unwrap()), "ended");
        let results = api.results(&id).await.unwrap();
        let ItemOutcome::Answer(a) = &results["req-0"] else {
            panic!("req-0 has no answer");
        };
        assert_eq!((a.text.as_str(), a.usage.input_tokens), ("answer", 40));
        let ItemOutcome::Failed(e) = &results["req-1"] else {
            panic!("req-1 did not fail");
        };
        assert!(e.is_retryable(), "{e:?}");
        assert!(!e.message.contains(KEY));
        assert!(matches!(results["req-2"], ItemOutcome::Expired));
    }

    #[tokio::test]
    async fn both_fakes_refuse_a_batch_past_their_limits_as_a_whole() {
        let fake = FakeServer::start().await;
        for (kind, model) in [
            (ProviderKind::Openai, "gpt-4o-mini"),
            (ProviderKind::Anthropic, "claude-sonnet-4-6"),
        ] {
            fake.set_batch_script(BatchScript {
                max_requests: Some(2),
                ..BatchScript::default()
            });
            let err = client(&fake, kind).submit(&items(model)).await.unwrap_err();
            assert_eq!(err.status, Some(400), "{kind:?}: {err:?}");
            assert!(err.message.contains("at most 2"), "{kind:?}: {err:?}");
            fake.set_batch_script(BatchScript {
                max_bytes: Some(100),
                ..BatchScript::default()
            });
            let err = client(&fake, kind).submit(&items(model)).await.unwrap_err();
            let status = if kind == ProviderKind::Anthropic {
                413
            } else {
                400
            };
            assert_eq!(err.status, Some(status), "{kind:?}: {err:?}");
        }
    }

    #[tokio::test]
    async fn a_wrong_key_is_an_auth_error_without_the_key_in_it() {
        let fake = FakeServer::start().await;
        fake.require_api_key("another-key");
        for kind in [ProviderKind::Openai, ProviderKind::Anthropic] {
            let err = client(&fake, kind).submit(&items("m")).await.unwrap_err();
            assert_eq!(err.kind, tollgate::provider::ErrorKind::Auth, "{kind:?}");
            assert!(!format!("{err:?}").contains(KEY));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_poll_interval_is_bad_input() {
    let fake = FakeServer::start().await;
    let p = Project::new(&policy(&fake, ""), LABELS);
    let out = p.run(&["--batch-poll-interval", "soon"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--batch-poll-interval soon: not a duration")
    );
    assert_eq!(fake.request_count(), 0);
}
