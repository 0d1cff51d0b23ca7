//! Context management end to end against the fake (issue 14): retrieval
//! (what is sent, the labels the chunks carry, the gate, located errors),
//! chat history sent as real messages in each provider's shape (and its
//! summary step), and shared prompt prefixes marked for Anthropic's cache.

use fake_llm::{FakeServer, Reply};
use serde_json::{Value, json};

use crate::support::{Project, policy, report, stderr, step, transcript};

/// A handbook (public) and pay data (confidential), one question input;
/// the step is pinned to a cloud model so the gate decides.
const KB: &str = r#"version: 1
name: kb
inputs:
  question: {type: string}
documents:
  handbook: {files: ["docs/public/*.md"], sensitivity: public}
  pay: {files: ["docs/secret/*.md"], sensitivity: confidential}
steps:
  answer:
    task: answer
    model: workhorse
    retrieve: {from: [handbook, pay], query: "{{ inputs.question }}", top_k: 1, chunk_tokens: 64}
    prompt: "{% for c in retrieved %}[{{ c.source }}] {{ c.text }}{% endfor %}Question: {{ inputs.question }}"
"#;

fn kb(fake: &FakeServer) -> Project {
    Project::new(&policy(fake, ""), KB)
        .with(
            "docs/public/vacation.md",
            "Vacation: every employee gets 25 days of paid vacation per year.\n",
        )
        .with(
            "docs/public/laptops.md",
            "Laptops are replaced every three years by the IT desk.\n",
        )
        .with(
            "docs/secret/pay.md",
            "Salary bands: engineers earn between 90k and 140k a year.\n",
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrieval_sends_only_the_relevant_chunk_and_a_public_one_may_go_to_the_cloud() {
    let fake = FakeServer::start().await;
    fake.set_handler(|_| Reply::text("25 days.").usage(30, 3));
    let p = kb(&fake);
    let out = p
        .run(&[
            "--input",
            "question=How many vacation days do I get?",
            "--format",
            "json",
        ])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    assert_eq!(step(&report(&out), "answer")["model"], "workhorse");
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1);
    let sent = reqs[0].body["messages"][0]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        sent.contains("[docs/public/vacation.md] Vacation: every employee gets 25 days"),
        "{sent}"
    );
    assert!(
        !sent.contains("Laptops") && !sent.contains("Salary"),
        "{sent}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retrieved_confidential_chunk_keeps_the_step_off_the_cloud() {
    let fake = FakeServer::start().await;
    let p = kb(&fake);
    let out = p
        .run(&[
            "--input",
            "question=What are the salary bands of engineers?",
            "--format",
            "json",
        ])
        .await;
    assert_ne!(out.status.code(), Some(0), "{}", transcript(&out));
    assert!(fake.requests().is_empty(), "nothing was sent");
    assert!(
        transcript(&out).contains("confidential"),
        "{}",
        transcript(&out)
    );
    // Unpinned, the same question is routed to the local model.
    p.write("wf.yaml", &KB.replace("    model: workhorse\n", ""));
    fake.set_handler(|_| Reply::text("90k to 140k.").usage(30, 3));
    let out = p
        .run(&[
            "--input",
            "question=What are the salary bands of engineers?",
            "--format",
            "json",
        ])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    assert_eq!(step(&report(&out), "answer")["model"], "local");
    let sent = fake.last_request().body["messages"][0]["content"].to_string();
    assert!(sent.contains("Salary bands"), "{sent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_shows_the_documents_tokens_and_the_retrieved_ones() {
    let fake = FakeServer::start().await;
    let p = kb(&fake);
    let out = p
        .tollgate(&[
            "plan",
            "wf.yaml",
            "--policy",
            "policy.yaml",
            "--format",
            "json",
            "--input",
            "question=How many vacation days?",
        ])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let r = report(&out);
    let s = step(&r, "answer");
    assert_eq!(s["retrieval"]["documents"], 3);
    assert_eq!(s["retrieval"]["chunks"], 3);
    assert_eq!(s["retrieval"]["retrieved"], 1);
    let before = s["retrieval"]["document_tokens"].as_u64().unwrap();
    let after = s["retrieval"]["retrieved_tokens"].as_u64().unwrap();
    assert!(after > 0 && after < before, "{before} → {after}");
    assert_eq!(s["sensitivity"]["level"], "public");
    let text = p
        .tollgate(&[
            "plan",
            "wf.yaml",
            "--policy",
            "policy.yaml",
            "--input",
            "question=vacation days?",
        ])
        .await;
    let text = crate::support::stdout(&text) + &stderr(&text);
    assert!(
        text.contains("retrieval    1 of 3 chunks from 3 documents"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_retrieval_settings_are_located_errors() {
    let fake = FakeServer::start().await;
    let cases = [
        (KB.replace("from: [handbook, pay]", "from: [handbok]"), "unknown document set `handbok`", "did you mean `handbook`?"),
        (KB.replace("docs/secret/*.md", "docs/nope/*.md"), "`docs/nope/*.md` matches no file", "relative to the workflow file"),
        (KB.replace("docs/secret/*.md", "../*.md"), "leads out of the project folder", "inside the project folder"),
        (KB.replace("    retrieve: {from: [handbook, pay], query: \"{{ inputs.question }}\", top_k: 1, chunk_tokens: 64}\n", ""), "`retrieved` in the prompt of step `answer`, which has no `retrieve`", "add `retrieve:"),
        (KB.replace("top_k: 1", "top_k: 0"), "top_k", ""),
        (
            KB.replace("pay: {files: [\"docs/secret/*.md\"], ", "pay: {"),
            "document set `pay` needs either `files` or `input`",
            "not both",
        ),
    ];
    for (wf, message, hint) in cases {
        let p = kb(&fake).with("wf.yaml", &wf);
        let out = p.tollgate(&["check", "wf.yaml", "policy.yaml"]).await;
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
        assert!(err.contains(message), "{message}: {err}");
        assert!(err.contains(hint), "{hint}: {err}");
        assert!(err.contains("wf.yaml:"), "located: {err}");
    }
    assert!(fake.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_from_an_input_carry_its_label() {
    let fake = FakeServer::start().await;
    fake.set_handler(|_| Reply::text("ok").usage(10, 1));
    let wf = r#"version: 1
name: tickets
inputs:
  tickets: {type: array, sensitivity: confidential}
  q: {type: string}
documents:
  past: {input: tickets}
steps:
  similar:
    task: answer
    retrieve: {from: past, query: "{{ inputs.q }}", top_k: 2}
    prompt: "{% for c in retrieved %}{{ c.source }}: {{ c.text }}\n{% endfor %}"
"#;
    let p = Project::new(&policy(&fake, ""), wf);
    let tickets = json!([
        {"text": "Printer on floor 2 jams", "source": "T-1"},
        "VPN drops every hour",
        {"text": "Printer toner empty", "source": "T-3"}
    ]);
    p.write("tickets.json", &tickets.to_string());
    let out = p
        .run(&[
            "--input",
            "tickets=@tickets.json",
            "--input",
            "q=printer jams",
            "--format",
            "json",
        ])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    // Confidential documents: routed to the local model.
    assert_eq!(step(&report(&out), "similar")["model"], "local");
    let sent = fake.last_request().body["messages"][0]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(sent.starts_with("T-1: Printer on floor 2 jams\n"), "{sent}");
    assert!(!sent.contains("VPN"), "{sent}");
    // A malformed document is one clear error.
    p.write("tickets.json", r#"[{"source": "T-9"}]"#);
    let out = p
        .run(&[
            "--input",
            "tickets=@tickets.json",
            "--input",
            "q=printer",
            "--format",
            "json",
        ])
        .await;
    assert_ne!(out.status.code(), Some(0));
    assert!(
        transcript(&out).contains("document 0 of input `tickets` must have a string `text`"),
        "{}",
        transcript(&out)
    );
}

const CHAT: &str = r#"version: 1
name: chat
inputs:
  chat: {type: messages}
steps:
  openai:
    task: chat
    model: budget
    system: "Be kind."
    history: {from: chat, keep_last: 2}
    prompt: "Answer the last question."
  anthropic:
    task: chat
    model: workhorse
    system: "Be kind."
    history: {from: chat, keep_last: 2}
    prompt: "Answer the last question."
  gemini:
    task: chat
    model: flagship
    history: {from: chat, keep_last: 2}
    prompt: "Answer the last question."
"#;

const TURNS: &str = r#"{"role": "system", "content": "You are the support desk."}
{"role": "user", "content": "My VPN drops."}
{"role": "assistant", "content": "Since when?"}
{"role": "user", "content": "Since Monday."}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_sent_as_real_messages_in_each_providers_shape() {
    let fake = FakeServer::start().await;
    fake.set_handler(|_| Reply::text("Try reconnecting.").usage(20, 3));
    let p = Project::new(&policy(&fake, ""), CHAT).with("chat.jsonl", TURNS);
    let out = p
        .run(&["--input", "chat=@chat.jsonl", "--format", "json"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let by_path = |needle: &str| -> Value {
        fake.requests()
            .into_iter()
            .find(|r| r.path.contains(needle))
            .unwrap_or_else(|| panic!("no request to {needle}"))
            .body
    };
    let o = by_path("/chat/completions");
    let roles: Vec<&str> = o["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles[1..], ["assistant", "user", "user"], "{o}");
    assert!(["system", "developer"].contains(&roles[0]), "{o}");
    assert_eq!(
        o["messages"][0]["content"],
        "Be kind.\n\nYou are the support desk."
    );
    assert_eq!(o["messages"][1]["content"], "Since when?");
    assert_eq!(o["messages"][3]["content"], "Answer the last question.");
    let a = by_path("/v1/messages");
    assert_eq!(a["system"], "Be kind.\n\nYou are the support desk.");
    assert_eq!(
        a["messages"],
        json!([
            {"role": "assistant", "content": "Since when?"},
            {"role": "user", "content": "Since Monday."},
            {"role": "user", "content": "Answer the last question."}
        ])
    );
    let g = by_path("models/gemini");
    assert_eq!(
        g["systemInstruction"]["parts"][0]["text"],
        "You are the support desk."
    );
    let roles: Vec<&str> = g["contents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["model", "user", "user"], "{g}");
    // The oldest turn was not sent anywhere.
    for r in fake.requests() {
        assert!(!r.raw_body.contains("My VPN drops"), "{}", r.raw_body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_history_is_one_clear_error() {
    let fake = FakeServer::start().await;
    let p = Project::new(&policy(&fake, ""), CHAT).with(
        "chat.jsonl",
        "{\"role\": \"user\", \"content\": \"hi\"}\n{\"role\": \"bot\", \"content\": \"hello\"}\n",
    );
    let out = p.run(&["--input", "chat=@chat.jsonl"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    assert!(
        stderr(&out).contains("message 1 has role `bot`"),
        "{}",
        transcript(&out)
    );
    let p = p.with("wf.yaml", &CHAT.replace("history: {from: chat, keep_last: 2}\n    prompt: \"Answer the last question.\"\n  gemini", "history: {from: nope}\n    prompt: \"x\"\n  gemini"));
    let out = p.tollgate(&["check", "wf.yaml", "policy.yaml"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    assert!(
        stderr(&out).contains("the history of step `anthropic` is unknown input `nope`"),
        "{}",
        transcript(&out)
    );
    assert!(stderr(&out).contains("wf.yaml:"), "located");
    assert!(fake.requests().is_empty());
}

const SUMMARIZED: &str = r#"version: 1
name: chat
inputs:
  chat: {type: messages, sensitivity: confidential}
steps:
  reply:
    task: chat
    history: {from: chat, keep_last: 1, summarize_older: true}
    prompt: "Answer the last question."
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_turns_are_summarized_by_a_generated_step_that_keeps_the_label() {
    let fake = FakeServer::start().await;
    fake.set_handler(|r| {
        if r.raw_body.contains("Summarize this conversation") {
            Reply::text("The user's VPN drops since Monday.").usage(40, 8)
        } else {
            Reply::text("Reinstall the client.").usage(30, 4)
        }
    });
    let p = Project::new(&policy(&fake, ""), SUMMARIZED).with("chat.jsonl", TURNS);
    let out = p
        .run(&["--input", "chat=@chat.jsonl", "--format", "json"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let r = report(&out);
    // Confidential history: the summary step stays local like its reader.
    assert_eq!(step(&r, "reply__history")["model"], "local");
    assert_eq!(step(&r, "reply")["model"], "local");
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    let summary_req = reqs[0].body["messages"].to_string();
    assert!(
        summary_req.contains("user: My VPN drops.")
            && summary_req.contains("assistant: Since when?"),
        "{summary_req}"
    );
    assert!(
        !summary_req.contains("Since Monday"),
        "the kept turn is not summarized: {summary_req}"
    );
    let msgs = &reqs[1].body["messages"];
    let contents: Vec<&str> = msgs
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        contents,
        [
            "You are the support desk.",
            "Summary of the earlier conversation:\nThe user's VPN drops since Monday.",
            "Since Monday.",
            "Answer the last question."
        ]
    );
    // With nothing older than the kept turns, the summary step is skipped
    // and the reply still runs.
    p.write("short.jsonl", "{\"role\": \"user\", \"content\": \"Hi\"}\n");
    let out = p
        .run(&["--input", "chat=@short.jsonl", "--format", "json"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let r = report(&out);
    assert_eq!(step(&r, "reply__history")["status"], "skipped");
    assert_eq!(step(&r, "reply")["status"], "succeeded");
    assert_eq!(fake.requests().len(), 3);
    // The summary step's pin is checked where it is written.
    p.write(
        "wf.yaml",
        &SUMMARIZED.replace(
            "summarize_older: true}",
            "summarize_older: true, summarize_with: nope}",
        ),
    );
    let out = p.tollgate(&["check", "wf.yaml", "policy.yaml"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    let err = stderr(&out);
    assert!(
        err.contains("step `reply__history` is pinned to unknown model `nope`"),
        "{err}"
    );
    assert!(
        err.contains("wf.yaml:8:80"),
        "located at summarize_with: {err}"
    );
}

/// Twenty calls whose prompts start with the same long manual.
const FAN_OUT: &str = r#"version: 1
name: fan
inputs:
  items: {type: array}
steps:
  each:
    task: write
    for_each: inputs.items
    prompt: "{% for i in range(150) %}Rule {{ i }}: answer precisely and cite the section you rely on.\n{% endfor %}Item: {{ item }}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_prompt_prefix_is_marked_for_anthropic_and_planned_as_cache_reads() {
    let fake = FakeServer::start().await;
    fake.set_handler(|_| Reply::text("ok").usage(2000, 2));
    let policy = policy(&fake, "").replace(
        "api_key_env: TEST_ANTHROPIC_KEY }",
        "api_key_env: TEST_ANTHROPIC_KEY, prompt_cache: { ttl: 5m } }",
    );
    let p = Project::new(&policy, FAN_OUT);
    let items = ["--input", r#"items=["a","b","c"]"#];
    let plan = p
        .tollgate(&[
            "plan",
            "wf.yaml",
            "--policy",
            "policy.yaml",
            "--format",
            "json",
            items[0],
            items[1],
        ])
        .await;
    assert_eq!(plan.status.code(), Some(0), "{}", transcript(&plan));
    let planned = report(&plan);
    let pc = &step(&planned, "each")["prompt_cache"];
    let shared = pc["shared_prefix_tokens"].as_u64().unwrap();
    assert!(shared >= pc["min_tokens"].as_u64().unwrap(), "{pc}");
    assert_eq!(
        pc["expected_read_tokens"].as_u64(),
        Some(shared * 2),
        "{pc}"
    );
    let out = p.run(&[items[0], items[1], "--format", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 3);
    let mut tails = Vec::new();
    for r in &reqs {
        let blocks = &r.body["messages"][0]["content"];
        assert_eq!(
            blocks[0]["cache_control"],
            json!({"type": "ephemeral"}),
            "{blocks}"
        );
        assert!(
            blocks[0]["text"]
                .as_str()
                .unwrap()
                .ends_with("Rule 149: answer precisely and cite the section you rely on.\n")
        );
        assert_eq!(blocks[1]["type"], "text");
        assert!(blocks[1].get("cache_control").is_none(), "{blocks}");
        tails.push(blocks[1]["text"].as_str().unwrap().to_owned());
    }
    // The calls go out concurrently: any order.
    tails.sort();
    assert_eq!(tails, ["Item: a", "Item: b", "Item: c"]);
}
