//! A streamed list: an `array` input declared `stream: true`, given as a
//! JSON Lines file and read a line at a time on each pass. What a user
//! relies on: it means what the same list typed in as JSON means (the same
//! requests, answers and plan); every line is checked before anything is
//! spent; a file changed while the run reads it stops the run before any
//! changed item is sent, and a resume insists on the same bytes; reading
//! it any other way is a located error at `check`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use fake_llm::{Recorded, Reply};
use serde_json::Value;

use crate::support::*;

/// More items than a step keeps call reports for in memory.
const ITEMS: usize = 300;

fn workflow() -> &'static str {
    "version: 1\nname: streamed\ninputs:\n  xs: {type: array, stream: true, sensitivity: internal}\nsteps:\n  label:\n    task: classify\n    for_each: inputs.xs\n    prompt: 'Label {{ item.name }}.'\n    max_output_tokens: 5\n"
}

fn items(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| serde_json::json!({"name": format!("item-{i}"), "n": i}))
        .collect()
}

/// The items as JSON Lines, with a blank line and CRLF line ends mixed in.
fn jsonl(items: &[Value]) -> String {
    let mut out = String::new();
    for (i, v) in items.iter().enumerate() {
        out.push_str(&v.to_string());
        out.push_str(if i % 5 == 0 { "\r\n" } else { "\n" });
        if i == 3 {
            out.push('\n');
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_list_means_what_the_same_list_typed_in_means() {
    let fake = fake_llm::FakeServer::start().await;
    fake.set_handler(|r: &Recorded| {
        let n = item_of(r);
        Reply::text(format!("label {n}")).usage(10 + (n % 7) as u64, 2)
    });
    let list = items(ITEMS);
    let project = Project::new(&policy(&fake, ""), workflow()).with("xs.jsonl", &jsonl(&list));
    let held = format!("xs={}", Value::Array(list.clone()));

    // The plan: the same route, calls and cost either way.
    let plan = |input: &str| {
        project
            .tollgate(&[
                "plan",
                "wf.yaml",
                "--policy",
                "policy.yaml",
                "--format",
                "json",
                "-i",
                input,
            ])
            .output()
    };
    let (streamed_plan, held_plan) = (plan("xs=@xs.jsonl"), plan(&held));
    assert_eq!(
        streamed_plan.status.code(),
        Some(0),
        "{}",
        transcript(&streamed_plan)
    );
    assert_eq!(
        held_plan.status.code(),
        Some(0),
        "{}",
        transcript(&held_plan)
    );
    let (sp, hp) = (report(&streamed_plan), report(&held_plan));
    let s = &sp["steps"][0];
    assert_eq!(s["calls"], ITEMS, "{s}");
    assert_eq!(s["fan_out"]["items"], ITEMS);
    for key in [
        "calls",
        "fan_out",
        "route",
        "model",
        "tokens",
        "cost",
        "sensitivity",
    ] {
        assert_eq!(s[key], hp["steps"][0][key], "{key}");
    }
    // The plan names the file (not its folder) and what it was checked to hold.
    let input = &sp["inputs"][0];
    assert_eq!(input["streamed"]["file"], "xs.jsonl", "{input}");
    assert_eq!(input["streamed"]["items"], ITEMS, "{input}");
    assert!(hp["inputs"][0].get("streamed").is_none());
    let text = project
        .tollgate(&[
            "plan",
            "wf.yaml",
            "--policy",
            "policy.yaml",
            "-i",
            "xs=@xs.jsonl",
        ])
        .output();
    assert!(
        stdout(&text).contains(&format!(
            "xs (streamed from xs.jsonl, {ITEMS} items, internal)"
        )),
        "{}",
        transcript(&text)
    );

    // The run: every line once, in item order, the same answers and the
    // same requests as the held list's run.
    let out = project
        .run(&["--format", "json", "--no-cache", "-i", "xs=@xs.jsonl"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let r = report(&out);
    let label = step(&r, "label");
    let calls = label["calls"].as_array().unwrap();
    assert_eq!(calls.len(), ITEMS);
    for (i, (c, o)) in calls
        .iter()
        .zip(label["output"].as_array().unwrap())
        .enumerate()
    {
        assert_eq!(c["item"], i, "{c}");
        assert_eq!(*o, format!("label {i}"));
    }
    let mut streamed_bodies: Vec<String> =
        fake.requests().iter().map(|r| r.raw_body.clone()).collect();
    let before = fake.request_count();
    let again = project
        .run(&["--format", "json", "--no-cache", "-i", &held])
        .await;
    assert_eq!(again.status.code(), Some(0), "{}", transcript(&again));
    assert_eq!(step(&report(&again), "label")["output"], label["output"]);
    let mut held_bodies: Vec<String> = fake.requests()[before..]
        .iter()
        .map(|r| r.raw_body.clone())
        .collect();
    streamed_bodies.sort();
    held_bodies.sort();
    assert_eq!(streamed_bodies, held_bodies);

    // The journal keeps the file's path and hash, not its items.
    let journal = project.journal();
    let run = journal.run(r["run_id"].as_str().unwrap()).unwrap().unwrap();
    let kept = &run.inputs["xs"];
    assert_eq!(kept["items"], ITEMS, "{kept}");
    assert!(
        kept["stream"].as_str().unwrap().ends_with("xs.jsonl"),
        "{kept}"
    );
    assert_eq!(kept["sha256"].as_str().map(str::len), Some(64), "{kept}");
    assert!(!run.inputs.to_string().contains("item-1"), "{}", run.inputs);
}

/// The guarantee: an item the run sends is one the plan checked. The fake
/// edits the file's last block while the first answers are out; the run
/// stops at that block (no request for any of its items), says why, and a
/// resume is refused until the file holds the checked bytes again — then
/// only the items never answered are sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_changed_while_the_run_reads_it_stops_before_the_changed_items() {
    // Lines of 100,000 bytes: a block (at least 1 MiB of whole lines) is
    // 11 lines, so the blocks start at lines 1, 12, 23 and 34.
    const LINES: usize = 40;
    let line = |i: usize| {
        let head = format!("{{\"name\": \"item-{i}\", \"pad\": \"");
        let pad = 100_000 - head.len() - 3;
        format!("{head}{}\"}}\n", "p".repeat(pad))
    };
    let text: String = (0..LINES).map(line).collect();
    assert!(text.lines().all(|l| l.len() == 99_999));
    let fake = fake_llm::FakeServer::start().await;
    let project = Project::new(&policy(&fake, ""), workflow()).with("xs.jsonl", &text);
    let path = project.path().join("xs.jsonl");
    let edited = Arc::new(AtomicBool::new(false));
    {
        let (path, edited, text) = (path.clone(), Arc::clone(&edited), text.clone());
        fake.set_handler(move |r: &Recorded| {
            let n = item_of(r);
            if n == 2 && !edited.swap(true, Ordering::SeqCst) {
                // One byte of line 40 (the fourth block), same size.
                let mut bytes = text.clone().into_bytes();
                bytes[39 * 100_000 + 50] = b'q';
                std::fs::write(&path, bytes).unwrap();
            }
            Reply::text(format!("label {n}"))
        });
    }
    let out = project
        .run(&[
            "--format",
            "json",
            "--concurrency",
            "1",
            "-i",
            "xs=@xs.jsonl",
        ])
        .await;
    let said = transcript(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(edited.load(Ordering::SeqCst));
    let r = report(&out);
    let s = step(&r, "label");
    assert_eq!(s["status"], "failed", "{s}");
    let detail = s["detail"].as_str().unwrap();
    assert!(
        detail.contains("streamed input `xs`")
            && detail.contains("the file changed after it was checked (from line 34 on)"),
        "{detail}"
    );
    // Items 0..=32 (lines 1–33) were sent, each once; nothing after.
    let mut sent: Vec<usize> = fake.requests().iter().map(item_of).collect();
    sent.sort_unstable();
    assert_eq!(sent, (0..33).collect::<Vec<_>>());

    // A resume reads the file again and compares it with the journal's hash.
    let resume = ["run", "--resume", "last", "--format", "json"];
    let refused = project.tollgate(&resume).keys().await;
    let said = transcript(&refused);
    assert_eq!(refused.status.code(), Some(2), "{said}");
    assert!(said.contains("cannot resume with input `xs`"), "{said}");
    assert!(said.contains("changed since the run started"), "{said}");

    // The checked bytes back: the answered items come from the journal.
    std::fs::write(&path, &text).unwrap();
    let before = fake.request_count();
    let resumed = project.tollgate(&resume).keys().await;
    assert_eq!(resumed.status.code(), Some(0), "{}", transcript(&resumed));
    let mut sent: Vec<usize> = fake.requests()[before..].iter().map(item_of).collect();
    sent.sort_unstable();
    assert_eq!(sent, (33..LINES).collect::<Vec<_>>());
    let outputs = step(&report(&resumed), "label")["output"].clone();
    let want: Vec<String> = (0..LINES).map(|n| format!("label {n}")).collect();
    assert_eq!(outputs, serde_json::json!(want));
}

/// A bad file is bad input: one error naming the line and column, before
/// any call; standard input cannot be read on each pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_streamed_file_is_refused_before_any_call() {
    let fake = fake_llm::FakeServer::start().await;
    let project = Project::new(&policy(&fake, ""), workflow())
        .with(
            "bad.jsonl",
            "{\"name\": \"a\"}\n{\"name\": \"b\"}\n  {\"name\": }\n",
        )
        .with("array.json", "[\n  {\"name\": \"a\"}\n]\n");
    for (input, want) in [
        (
            "xs=@bad.jsonl",
            "--input xs: bad.jsonl:3:12: expected value",
        ),
        ("xs=@array.json", "--input xs: array.json:1:"),
        (
            "xs=@missing.jsonl",
            "--input xs: cannot use `missing.jsonl`: no such file",
        ),
        (
            "xs=@-",
            "--input xs=@-: a streamed input is read once per pass, from a file",
        ),
    ] {
        let out = project.run(&["-i", input]).await;
        let said = transcript(&out);
        assert_eq!(out.status.code(), Some(2), "{input}: {said}");
        assert!(said.contains(want), "{input}: {said}");
    }
    assert!(
        transcript(&project.run(&["-i", "xs=@array.json"]).await).contains("jq -c '.[]'"),
        "a JSON array file gets the hint that converts it"
    );
    assert_eq!(fake.request_count(), 0);
}

/// A streamed input is read only as a step's whole `for_each`: anything
/// else would need every item at once. Each misuse is a located error.
#[test]
fn reading_a_streamed_input_any_other_way_is_a_located_error() {
    let decl = "version: 1\nname: s\ninputs:\n  xs: {type: array, stream: true}\n";
    let cases = [
        (
            "steps:\n  a:\n    task: t\n    for_each: inputs.xs\n    prompt: '{{ item }} of {{ inputs.xs | length }}'\n",
            "the prompt of step `a` reads `inputs.xs`, but input `xs` is streamed",
            "wf.yaml:9:",
        ),
        (
            "steps:\n  a:\n    task: t\n    for_each: 'inputs.xs | reverse'\n    prompt: '{{ item }}'\n",
            "`for_each` of step `a` reads `inputs.xs`, but input `xs` is streamed",
            "wf.yaml:8:",
        ),
        (
            "steps:\n  a:\n    task: t\n    prompt: '{{ inputs | tojson }}'\n",
            "the prompt of step `a` reads `inputs`, but input `xs` is streamed",
            "wf.yaml:8:",
        ),
        (
            "steps:\n  a:\n    task: t\n    for_each: inputs.xs\n    prompt: '{{ item }}'\n    context: {max_input_tokens: 100}\n",
            "step `a` fans out over streamed input `xs` and has `context`",
            "wf.yaml:10:",
        ),
        (
            "documents:\n  d: {input: xs}\nsteps:\n  a:\n    task: t\n    prompt: 'x'\n",
            "document set `d` is input `xs`, which is streamed",
            "wf.yaml:6:",
        ),
    ];
    for (steps, want, at) in cases {
        let project = Project::empty().with("wf.yaml", &format!("{decl}{steps}"));
        let out = project.tollgate(&["check", "wf.yaml"]).output();
        let said = transcript(&out);
        assert_eq!(out.status.code(), Some(2), "{steps}\n{said}");
        assert!(said.contains(want), "{steps}\n{said}");
        assert!(said.contains(at), "{steps}\n{said}");
    }
    let project = Project::empty().with(
        "wf.yaml",
        "version: 1\nname: s\ninputs:\n  xs: {type: string, stream: true}\nsteps:\n  a: {task: t, prompt: '{{ inputs.xs }}'}\n",
    );
    let out = project.tollgate(&["check", "wf.yaml"]).output();
    let said = transcript(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains("input `xs` is of type string: only an array can be streamed"),
        "{said}"
    );
}

/// A step that reads a fan-out's output holds every answer: past the
/// bound of a held list, a streamed fan-out's readers are refused before
/// anything is sent (and the plan builds no stand-in per item for them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_cannot_read_the_answers_of_a_fan_out_wider_than_a_held_list() {
    let fake = fake_llm::FakeServer::start().await;
    let wide = tollgate::template::MAX_FOR_EACH_ITEMS + 1;
    let lines: String = (0..wide)
        .map(|i| format!("{{\"name\": \"item-{i}\"}}\n"))
        .collect();
    let workflow = format!(
        "{}  digest:\n    task: summarize\n    prompt: 'Summarize {{{{ steps.label.output | length }}}} labels.'\n",
        workflow()
    );
    let project = Project::new(&policy(&fake, ""), &workflow).with("xs.jsonl", &lines);
    let out = project.run(&["-i", "xs=@xs.jsonl"]).await;
    let said = transcript(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    // (The report wraps the message: its two halves.)
    let head =
        format!("step `digest` reads the output of step `label`, which fans out over {wide} items");
    assert!(said.contains(&head), "{said}");
    assert!(
        said.contains(&format!("read at most {} answers", wide - 1)),
        "{said}"
    );
    assert!(said.contains("wf.yaml:13:"), "{said}");
    assert_eq!(fake.request_count(), 0);
}
