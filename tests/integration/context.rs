//! Context management end to end (issue 14): a step's budget and trimming,
//! and chunked map-reduce, against the loopback fake — what the requests
//! really hold, what `plan` says, the located errors, and the gate on every
//! chunk.

use fake_llm::{FakeServer, Recorded, Reply};
use serde_json::Value;

use crate::support::{Ledger, Project, policy, report, stderr, stdout, step, transcript};

/// The user message of an OpenAI-style request (the fake's budget and local
/// models both speak Chat Completions).
fn user_text(r: &Recorded) -> String {
    r.body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// A document whose every line is recognisable: `L0001 …` to `L{n}`.
fn document(lines: usize) -> String {
    (1..=lines)
        .map(|i| format!("L{i:04} the ledger shows a transfer of {i} coins to the northern mill."))
        .collect::<Vec<_>>()
        .join("\n")
}

const TRIM: &str = r#"version: 1
name: trim
inputs:
  question: { type: string }
  doc: { type: string }
steps:
  answer:
    task: summarize
    prompt: "Question: {{ inputs.question }}\n\nDocument:\n{{ inputs.doc }}\n\nAnswer the question."
    max_output_tokens: 50
    context: { max_input_tokens: 300, trim: middle, input: doc }
"#;

async fn trimming_cuts_only_the_named_input_and_marks_the_cut(ledger: Ledger) {
    let fake = FakeServer::start().await;
    fake.set_default(Reply::text("42 coins").usage(300, 3));
    let p = Project::new(&policy(&fake, ""), TRIM)
        .with("doc.txt", &document(400))
        .on(&ledger);
    let question = "How many coins went to the mill in total?";
    let q = format!("question={question}");
    let out = p
        .run(&["--input", &q, "--input", "doc=@doc.txt", "--format", "json"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    assert_eq!(step(&report(&out), "answer")["output"], "42 coins");
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1);
    let sent = user_text(&reqs[0]);
    // The question and the instructions are intact; the document kept its
    // two ends and lost its middle, with a marker saying how much.
    assert!(
        sent.starts_with(&format!("Question: {question}\n\nDocument:\nL0001 ")),
        "{sent}"
    );
    assert!(sent.ends_with("L0400 the ledger shows a transfer of 400 coins to the northern mill.\n\nAnswer the question."), "{sent}");
    assert!(!sent.contains("L0200"), "the middle was cut");
    assert!(sent.contains(" tokens cut …]"), "{sent}");
    // Within budget by the exact count.
    let n = tollgate::tokens::count_chat(tollgate::tokens::Tokenizer::O200kBase, &[&sent]);
    assert!(n <= 300, "{n} tokens sent");

    // The plan says the same: the strategy, before and after, what was cut,
    // and the saving, in text and JSON.
    let plan = p
        .tollgate(&[
            "plan",
            "wf.yaml",
            "--policy",
            "policy.yaml",
            "--input",
            &q,
            "--input",
            "doc=@doc.txt",
            "--format",
            "json",
        ])
        .await;
    assert_eq!(plan.status.code(), Some(0), "{}", transcript(&plan));
    let plan: Value = serde_json::from_slice(&plan.stdout).unwrap();
    let c = &plan["steps"][0]["context"];
    assert_eq!(c["strategy"], "trim: middle");
    let (before, after) = (
        c["tokens_before"].as_u64().unwrap(),
        c["tokens_after"].as_u64().unwrap(),
    );
    assert!(before > 5000 && after <= 300, "{before} → {after}");
    assert_eq!(c["cut"][0]["input"], "doc");
    assert!(c["saved_usd"].as_f64().unwrap() > 0.0);
    let total = &plan["totals"]["context"];
    assert_eq!(total["tokens_after"].as_u64(), Some(after));
    assert!(total["saved_usd"].as_f64().unwrap() > 0.0);
    let text = p
        .tollgate(&[
            "plan",
            "wf.yaml",
            "--policy",
            "policy.yaml",
            "--input",
            &q,
            "--input",
            "doc=@doc.txt",
        ])
        .await;
    let text = stdout(&text);
    assert!(
        text.contains(&format!(
            "   context      trim: middle; in {before} → {after} tokens; saved $"
        )),
        "{text}"
    );
    assert!(text.contains("                cut inputs.doc: "), "{text}");
    assert!(text.contains("  context      1 step: in "), "{text}");

    // `report` counts it as its own lever, from the journal.
    let rep = p.tollgate(&["report", "--format", "json"]).await;
    assert_eq!(rep.status.code(), Some(0), "{}", transcript(&rep));
    let rep: Value = serde_json::from_slice(&rep.stdout).unwrap();
    let s = &rep["totals"]["savings"];
    assert_eq!(s["context_tokens"].as_u64(), Some(before - after));
    assert!(s["context_usd"].as_f64().unwrap() > 0.0, "{s}");
    let by_step = rep["by_step"].as_array().unwrap();
    assert_eq!(
        by_step[0]["savings"]["context_tokens"].as_u64(),
        Some(before - after)
    );
    let text = stdout(&p.tollgate(&["report"]).await);
    assert!(text.contains("by context management ("), "{text}");
}

// The report reads the plan's context figures back with each dialect's SQL.
crate::on_both_ledgers!(trimming_cuts_only_the_named_input_and_marks_the_cut);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn within_budget_nothing_is_cut() {
    let fake = FakeServer::start().await;
    fake.set_default(Reply::text("ok").usage(30, 1));
    let p = Project::new(&policy(&fake, ""), TRIM);
    let out = p
        .run(&[
            "--input",
            "question=Why?",
            "--input",
            "doc=short text",
            "--format",
            "json",
        ])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let sent = user_text(&fake.requests()[0]);
    assert_eq!(
        sent,
        "Question: Why?\n\nDocument:\nshort text\n\nAnswer the question."
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_budget_without_an_input_to_cut_is_a_located_error_and_nothing_is_sent() {
    let fake = FakeServer::start().await;
    let wf = TRIM.replace("trim: middle, input: doc", "");
    let p = Project::new(&policy(&fake, ""), &wf).with("doc.txt", &document(400));
    let out = p
        .run(&["--input", "question=q", "--input", "doc=@doc.txt"])
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    let err = stderr(&out);
    assert!(err.contains("over its max_input_tokens of 300"), "{err}");
    assert!(err.contains("wf.yaml:11:"), "located at the setting: {err}");
    assert!(err.contains("input: NAME"), "with a hint: {err}");
    assert_eq!(fake.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_settings_are_checked_with_located_errors() {
    let fake = FakeServer::start().await;
    let cases = [
        (
            "input: docs",
            "names unknown input `docs`",
            "did you mean `doc`?",
        ),
        ("input: doc", "", ""),
        (
            "trim: middle",
            "names no input that may be cut",
            "one of `doc`",
        ),
        (
            "input: question, trim: end, chunk: {input: doc, tokens: 100, overlap: 100}",
            "leaves nothing new",
            "overlap",
        ),
        (
            "input: question, chunk: {input: doc, tokens: 8}",
            "too small",
            "at least 32",
        ),
    ];
    for (setting, message, hint) in cases {
        let wf = TRIM.replace("trim: middle, input: doc", setting);
        let p = Project::new(&policy(&fake, ""), &wf);
        let out = p.tollgate(&["check", "wf.yaml", "policy.yaml"]).await;
        if message.is_empty() {
            assert_eq!(
                out.status.code(),
                Some(0),
                "{setting}: {}",
                transcript(&out)
            );
            continue;
        }
        assert_eq!(
            out.status.code(),
            Some(2),
            "{setting}: {}",
            transcript(&out)
        );
        let err = stderr(&out);
        assert!(
            err.contains(message) && err.contains(hint),
            "{setting}: {err}"
        );
        assert!(err.contains("wf.yaml:11:"), "{setting}: located: {err}");
    }
    // The schema refuses an unknown trim.
    let p = Project::new(
        &policy(&fake, ""),
        &TRIM.replace("trim: middle", "trim: head"),
    );
    let out = p.tollgate(&["check", "wf.yaml", "policy.yaml"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    assert!(stderr(&out).contains("wf.yaml:11:"), "{}", stderr(&out));
}

const MAP_REDUCE: &str = r#"version: 1
name: long-doc
inputs:
  doc: { type: string, sensitivity: internal }
steps:
  notes:
    task: summarize
    prompt: "Note the facts of this part:\n{{ item }}"
    max_output_tokens: 40
    context: { chunk: { input: doc, tokens: 500, overlap: 50 } }
  summary:
    task: write
    prompt: "Combine these notes:\n{% for n in steps.notes.output %}- {{ n }}\n{% endfor %}"
    max_output_tokens: 100
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_step_maps_every_chunk_and_the_reduce_sees_every_answer() {
    let fake = FakeServer::start().await;
    // Each map answer names the first line of its chunk.
    fake.set_handler(|r| {
        let text = user_text(r);
        if let Some(part) = text.strip_prefix("Note the facts of this part:\n") {
            let first = part.split_whitespace().next().unwrap_or("?").to_owned();
            Reply::text(format!("note from {first}")).usage(500, 5)
        } else {
            Reply::text("the final summary").usage(100, 10)
        }
    });
    let p = Project::new(&policy(&fake, ""), MAP_REDUCE).with("doc.txt", &document(300));
    let plan = p
        .tollgate(&[
            "plan",
            "wf.yaml",
            "--policy",
            "policy.yaml",
            "--input",
            "doc=@doc.txt",
            "--format",
            "json",
        ])
        .await;
    assert_eq!(plan.status.code(), Some(0), "{}", transcript(&plan));
    let plan: Value = serde_json::from_slice(&plan.stdout).unwrap();
    let notes = &plan["steps"][0];
    let chunks = notes["context"]["chunks"].as_u64().unwrap();
    assert!(chunks >= 8, "{chunks} chunks");
    assert_eq!(notes["calls"].as_u64(), Some(chunks));
    assert_eq!(notes["context"]["strategy"], "chunk");
    assert_eq!(notes["context"]["extra_calls"].as_u64(), Some(chunks - 1));

    let out = p
        .run(&["--input", "doc=@doc.txt", "--format", "json"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    assert_eq!(
        step(&report(&out), "summary")["output"],
        "the final summary"
    );
    let reqs = fake.requests();
    let maps: Vec<String> = reqs
        .iter()
        .map(user_text)
        .filter(|t| t.starts_with("Note the facts"))
        .collect();
    assert_eq!(maps.len() as u64, chunks, "one call per chunk");
    // Every line of the document is in some chunk; chunks stay within size.
    for i in [1, 150, 300] {
        let line = format!("L{i:04} ");
        assert!(maps.iter().any(|m| m.contains(&line)), "{line}");
    }
    for m in &maps {
        let n = tollgate::tokens::Tokenizer::O200kBase.count(m);
        assert!(n <= 500 + 20, "a chunk of {n} tokens (with the prompt)");
    }
    // The reduce got every map answer.
    let reduce = reqs
        .iter()
        .map(user_text)
        .find(|t| t.starts_with("Combine"))
        .expect("the reduce call");
    for m in &maps {
        let first = m["Note the facts of this part:\n".len()..]
            .split_whitespace()
            .next()
            .unwrap();
        assert!(
            reduce.contains(&format!("- note from {first}\n")),
            "{first}: {reduce}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confidential_document_is_never_chunked_to_the_cloud() {
    let fake = FakeServer::start().await;
    fake.set_default(Reply::text("leaked").usage(10, 1));
    // The map is pinned to a cloud model; the document is confidential.
    let wf = MAP_REDUCE
        .replace("sensitivity: internal", "sensitivity: confidential")
        .replace(
            "    max_output_tokens: 40\n",
            "    max_output_tokens: 40\n    model: budget\n",
        );
    let p = Project::new(&policy(&fake, ""), &wf).with("doc.txt", &document(300));
    for cmd in ["plan", "run"] {
        let out = p
            .tollgate(&[
                cmd,
                "wf.yaml",
                "--policy",
                "policy.yaml",
                "--input",
                "doc=@doc.txt",
            ])
            .keys()
            .await;
        assert_ne!(out.status.code(), Some(0), "{cmd}: {}", transcript(&out));
        let all = transcript(&out);
        assert!(all.contains("confidential"), "{cmd}: {all}");
    }
    assert_eq!(fake.request_count(), 0, "no chunk reached the fake");
    // Unpinned, the map goes local (the policy keeps confidential data
    // local) and so does the reduce: derived text keeps the label.
    let p = Project::new(
        &policy(&fake, ""),
        &MAP_REDUCE.replace("sensitivity: internal", "sensitivity: confidential"),
    )
    .with("doc.txt", &document(300));
    let out = p
        .run(&["--input", "doc=@doc.txt", "--format", "json"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let r = report(&out);
    assert_eq!(step(&r, "notes")["model"], "local");
    assert_eq!(step(&r, "summary")["model"], "local");
    assert!(fake.requests().iter().all(|r| r.model() == "local-llm"));
}

/// The measurement of issue 14 on a long document (`tests/data/long-document`,
/// ~28,000 tokens), planned on the repository's default policy: tokens sent
/// (all, and to cloud models) and expected cost, with the whole document in
/// one call, trimmed to 4,000 tokens, and mapped on the local model then
/// reduced (`workflows/long-document.yaml`). Plans only: deterministic, no
/// model. `cargo test --test integration measured -- --nocapture` prints
/// the table.
#[test]
fn measured_on_a_long_document() {
    let root = crate::support::root();
    let doc = std::fs::read_to_string(root.join("tests/data/long-document/document.txt")).unwrap();
    let policy = std::fs::read_to_string(root.join("policies/default.yaml")).unwrap();
    let whole = r#"version: 1
name: whole
inputs:
  doc: { type: string, sensitivity: internal }
  question: { type: string }
steps:
  answer:
    task: answer
    prompt: "Question: {{ inputs.question }}\n\n{{ inputs.doc }}\n\nAnswer the question from the document."
    max_output_tokens: 300
"#;
    let trimmed = whole.replace(
        "    max_output_tokens: 300\n",
        "    max_output_tokens: 300\n    context: { max_input_tokens: 4000, trim: middle, input: doc }\n",
    );
    let map_reduce = std::fs::read_to_string(root.join("workflows/long-document.yaml")).unwrap();
    let mut rows = Vec::new();
    for (name, wf) in [
        ("whole document", whole.to_owned()),
        ("trim: middle, 4,000", trimmed),
        ("map (local) + reduce", map_reduce),
    ] {
        let p = Project::new(&policy, &wf).with("doc.txt", &doc);
        let out = p
            .tollgate(&[
                "plan",
                "wf.yaml",
                "--policy",
                "policy.yaml",
                "--input",
                "doc=@doc.txt",
                "--input",
                "question=How does tollgate keep confidential data away from cloud models?",
                "--format",
                "json",
            ])
            .output();
        assert_eq!(out.status.code(), Some(0), "{name}: {}", transcript(&out));
        let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
        let steps = plan["steps"].as_array().unwrap();
        let tokens = |cloud: bool| -> u64 {
            steps
                .iter()
                .filter(|s| !cloud || s["model"]["locality"] == "cloud")
                .map(|s| s["tokens"]["input"].as_u64().unwrap())
                .sum()
        };
        rows.push((
            name,
            plan["totals"]["calls"].as_u64().unwrap(),
            tokens(false),
            tokens(true),
            plan["totals"]["cost"]["low"].as_f64().unwrap(),
        ));
    }
    println!(
        "{:<22} {:>6} {:>10} {:>10} {:>10}",
        "strategy", "calls", "tokens in", "to cloud", "expected"
    );
    for (name, calls, all, cloud, usd) in &rows {
        println!(
            "{name:<22} {calls:>6} {all:>10} {cloud:>10} {:>10}",
            format!("${usd:.4}")
        );
    }
    let (whole, trim, mr) = (&rows[0], &rows[1], &rows[2]);
    assert!(whole.3 > 20_000, "the document is long: {}", whole.3);
    assert!(
        trim.3 <= 4_000 && trim.4 < whole.4 / 4.0,
        "trimming sends a fraction"
    );
    assert!(mr.1 > 10, "one map call per chunk, and the reduce");
    assert!(
        mr.3 < whole.3 / 4 && mr.4 < whole.4 / 4.0,
        "the cloud sees notes, not the document"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_reduce_groups_the_answers_that_do_not_fit_one_call() {
    let fake = FakeServer::start().await;
    fake.set_handler(|r| {
        let text = user_text(r);
        if let Some(part) = text.strip_prefix("Note the facts of this part:\n") {
            let first = part.split_whitespace().next().unwrap_or("?").to_owned();
            Reply::text(format!("note from {first}")).usage(500, 5)
        } else if let Some(group) = text.strip_prefix("Merge:") {
            Reply::text(format!("merged {}", group.matches("note from").count())).usage(50, 3)
        } else {
            Reply::text("final").usage(30, 1)
        }
    });
    // A middle level: the notes in groups of at most 20 tokens (about three
    // notes), each group merged, then one final call over the merges.
    let wf = MAP_REDUCE.replace(
        "  summary:\n    task: write\n    prompt: \"Combine these notes:\\n{% for n in steps.notes.output %}- {{ n }}\\n{% endfor %}\"",
        "  groups:\n    task: summarize\n    for_each: steps.notes.output | chunks(20)\n    prompt: \"Merge:{% for n in item %} {{ n }};{% endfor %}\"\n    max_output_tokens: 40\n  summary:\n    task: write\n    prompt: \"Combine these notes:\\n{% for n in steps.groups.output %}- {{ n }}\\n{% endfor %}\"",
    );
    assert!(wf.contains("groups:"), "{wf}");
    let p = Project::new(&policy(&fake, ""), &wf).with("doc.txt", &document(300));
    let out = p
        .run(&["--input", "doc=@doc.txt", "--format", "json"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let texts: Vec<String> = fake.requests().iter().map(user_text).collect();
    let maps = texts
        .iter()
        .filter(|t| t.starts_with("Note the facts"))
        .count();
    let merges: Vec<&String> = texts.iter().filter(|t| t.starts_with("Merge:")).collect();
    assert!(
        merges.len() > 1 && merges.len() < maps,
        "{} groups of {maps} notes",
        merges.len()
    );
    // Every note is in exactly one group, in order.
    let grouped: usize = merges.iter().map(|m| m.matches("note from").count()).sum();
    assert_eq!(grouped, maps);
    let last = texts
        .iter()
        .find(|t| t.starts_with("Combine"))
        .expect("the final call");
    assert_eq!(last.matches("- merged ").count(), merges.len(), "{last}");
}

/// Issue 14's pass rates, replayed offline: Gemma 3 270M's recorded
/// answers to 20 questions about Moby-Dick chapters 4–10 (trimmed to the
/// window, retrieved, map-reduced) and 10 recall questions about a
/// 30-turn chat (whole, last 4 turns, last 4 and a summary), one suite per
/// strategy (`benches/context-eval.sh` prints the same). The snapshot pins
/// every figure; the assertions pin what makes the comparison fair: every
/// variant answered every case, and the strategies sent what they claim.
#[test]
fn the_context_evaluation_replays_offline() {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("comparison.json");
    let out = crate::support::tollgate(&[
        "compare",
        "benches/context/eval",
        "--policy",
        "benches/context/eval/policies/local.yaml",
        "--replay",
        "--quiet",
        "--out",
        out_file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let text = stdout(&out);
    assert!(!text.contains("errored"), "{text}");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&out_file).unwrap()).unwrap();
    let tokens_in = |suite: &str| -> u64 {
        let s = json["suites"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == suite)
            .unwrap_or_else(|| panic!("no suite {suite} in {json}"));
        s["rows"][0]["input_tokens"].as_u64().unwrap()
    };
    // Retrieval sends a few chunks, trimming a window's worth per question,
    // map-reduce the whole book (in chunks) and more.
    assert!(tokens_in("2-retrieved") < tokens_in("1-trimmed"));
    assert!(tokens_in("1-trimmed") < tokens_in("3-mapped"));
    // A window of four turns sends less than the whole chat, even with the
    // summary call.
    assert!(tokens_in("5-chat-last4") < tokens_in("4-chat-whole"));
    insta::assert_snapshot!("context_evaluation", text);
}
