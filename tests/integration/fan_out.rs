//! A fan-out larger than a step keeps in memory: its call reports (and its
//! answers, when no step reads them) go to temporary files as they arrive,
//! out of order, and every consumer reads them back in item order with the
//! same figures and bytes — the JSON report, `--out`'s files, the text
//! summary and stdout, the response cache's savings on a second run, a
//! resume, and a test suite's checks.

use fake_llm::{Recorded, Reply};
use serde_json::Value;

use crate::support::*;

/// More items than [`tollgate::run::IN_MEMORY`]: the reports are spilled.
const ITEMS: usize = 600;

fn workflow() -> String {
    let items: Vec<String> = (0..ITEMS).map(|i| format!("item-{i}")).collect();
    format!(
        "version: 1\nname: many\ninputs:\n  xs: {{type: array, default: {}}}\nsteps:\n  label:\n    task: classify\n    for_each: inputs.xs\n    prompt: 'Label {{{{ item }}}}.'\n    max_output_tokens: 5\n",
        serde_json::to_string(&items).unwrap()
    )
}

fn calls(r: &Value) -> &Vec<Value> {
    step(r, "label")["calls"].as_array().expect("calls")
}

/// The money of the calls summed in item order, as the step's is.
fn sum_in_order(calls: &[Value], key: &str) -> f64 {
    let mut sum = 0.0;
    for c in calls {
        sum += c[key].as_f64().unwrap_or_else(|| panic!("{key}: {c}"));
    }
    sum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spilled_fan_out_reports_every_call_once_in_item_order_with_its_totals() {
    const { assert!(ITEMS > tollgate::run::IN_MEMORY) };
    let fake = fake_llm::FakeServer::start().await;
    // Answers take different times, so they arrive out of item order.
    fake.set_handler(|r: &Recorded| {
        let n = item_of(r);
        Reply::text(format!("label {n}"))
            .usage(10 + (n % 17) as u64, 1 + (n % 4) as u64)
            .delay(std::time::Duration::from_millis((n * 7 % 5) as u64))
    });
    let project = Project::new(&policy(&fake, "cache: { ttl: 1h }\n"), &workflow());
    let out = project
        .run(&["--format", "json", "--out", "out", "--concurrency", "16"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let r = report(&out);
    let all = calls(&r);
    assert_eq!(all.len(), ITEMS);
    let s = step(&r, "label");
    let outputs = s["output"].as_array().expect("a list of outputs");
    for (i, (c, o)) in all.iter().zip(outputs).enumerate() {
        assert_eq!(c["item"], i, "{c}");
        assert_eq!(c["source"], "provider", "{c}");
        assert_eq!(c["usage"]["input_tokens"], 10 + (i % 17) as u64, "{c}");
        assert_eq!(c["attempts"].as_array().map(Vec::len), Some(1), "{c}");
        assert_eq!(*o, format!("label {i}"));
    }
    // The step's figures are its calls' in item order, to the last bit.
    let input: u64 = all
        .iter()
        .map(|c| c["usage"]["input_tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(s["usage"]["input_tokens"], input);
    let cost = sum_in_order(all, "cost_usd");
    assert!(cost > 0.0);
    assert_eq!(s["cost_usd"].as_f64().unwrap().to_bits(), cost.to_bits());
    let list = sum_in_order(all, "list_cost_usd");
    assert_eq!(
        s["list_cost_usd"].as_f64().unwrap().to_bits(),
        list.to_bits()
    );
    // `--out`'s run.json is the same report.
    let saved: Value = serde_json::from_str(&project.read("out/run.json")).unwrap();
    assert_eq!(saved, r);

    // Again, answered from the response cache: the savings are the calls'
    // own, summed in order, and the summary says where the answers came
    // from.
    let again = project.run(&["--format", "json"]).await;
    assert_eq!(again.status.code(), Some(0), "{}", transcript(&again));
    let r2 = report(&again);
    let cached = calls(&r2);
    assert_eq!(cached.len(), ITEMS);
    assert!(cached.iter().all(|c| c["source"] == "cache"));
    assert_eq!(r2["cache"]["hits"], ITEMS);
    let saved_usd = sum_in_order(cached, "saved_usd");
    assert_eq!(
        r2["cache"]["saved_usd"].as_f64().unwrap().to_bits(),
        saved_usd.to_bits()
    );
    let text = project.run(&[]).await;
    assert_eq!(text.status.code(), Some(0), "{}", transcript(&text));
    let summary = stderr(&text);
    assert!(summary.contains("ok (cached)"), "{summary}");
    assert!(
        summary.contains(&format!("cache: {ITEMS} calls answered from the journal")),
        "{summary}"
    );
    // The answers on stdout, in item order.
    let answers: Value = serde_json::from_str(&stdout(&text)).unwrap();
    assert_eq!(answers, s["output"]);
}

/// A cascade over a spilled fan-out: the escalations the summary lists are
/// the first ten in item order, whatever order the answers came in, and the
/// counts are over every call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spilled_cascade_lists_its_first_escalations_in_item_order() {
    const N: usize = 300;
    const { assert!(N > tollgate::run::IN_MEMORY) };
    let fake = fake_llm::FakeServer::start().await;
    let base = fake.base_url();
    // Every seventh item's cheap answer is not JSON: it escalates.
    fake.set_handler(|r: &Recorded| {
        let n = item_of(r);
        let delay = std::time::Duration::from_millis((n * 3 % 4) as u64);
        match r.model().as_str() {
            "local-llm" if n % 7 == 0 => Reply::text("no json here").delay(delay),
            "local-llm" => Reply::text(format!(r#"{{"label": "cheap {n}"}}"#)).delay(delay),
            _ => Reply::text(format!(r#"{{"label": "dear {n}"}}"#)).usage(40, 10),
        }
    });
    let policy = format!(
        r#"version: 1
name: cascades
providers:
  local:     {{ kind: openai-compatible, base_url: "{base}/v1" }}
  anthropic: {{ kind: anthropic, base_url: "{base}", api_key_env: TEST_ANTHROPIC_KEY }}
models:
  local:     {{ provider: local, model: local-llm, tier: local, context_window: 8192 }}
  workhorse: {{ provider: anthropic, model: claude-sonnet-4-6, tier: workhorse }}
rules:
  - name: labels
    use: local
    escalate: {{ to: workhorse, when: [invalid_output] }}
"#
    );
    let items: Vec<String> = (0..N).map(|i| format!("item-{i}")).collect();
    let workflow = format!(
        "version: 1\nname: esc\ninputs:\n  xs: {{type: array, default: {}}}\nsteps:\n  label:\n    task: classify\n    for_each: inputs.xs\n    prompt: 'Label {{{{ item }}}}.'\n    max_output_tokens: 20\n    output:\n      schema: {{type: object, properties: {{label: {{type: string}}}}, required: [label]}}\n",
        serde_json::to_string(&items).unwrap()
    );
    let project = Project::new(&policy, &workflow);
    let out = project.run(&["--format", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let r = report(&out);
    let all = calls(&r);
    assert_eq!(all.len(), N);
    for (i, c) in all.iter().enumerate() {
        assert_eq!(c["item"], i, "{c}");
        assert_eq!(c.get("escalation").is_some(), i % 7 == 0, "{c}");
        let label = if i % 7 == 0 { "dear" } else { "cheap" };
        assert_eq!(
            step(&r, "label")["output"][i]["label"],
            format!("{label} {i}")
        );
    }
    // The text summary: every call counted, the first ten listed in order.
    let text = project.run(&["--no-cache"]).await;
    assert_eq!(text.status.code(), Some(0), "{}", transcript(&text));
    let summary = stderr(&text);
    let escalated = N.div_ceil(7);
    assert!(
        summary.contains(&format!(
            "escalated {escalated} of {N} calls ({escalated} answered by the escalation target)"
        )),
        "{summary}"
    );
    let listed: Vec<&str> = summary
        .lines()
        .filter(|l| l.starts_with("  label["))
        .map(|l| l.split(':').next().unwrap())
        .collect();
    let want: Vec<String> = (0..N)
        .filter(|i| i % 7 == 0)
        .take(10)
        .map(|i| format!("  label[{i}]"))
        .collect();
    assert_eq!(listed, want, "{summary}");
    assert!(
        summary.contains(&format!("  … and {} more", escalated - 10)),
        "{summary}"
    );
}

/// Two fan-outs past [`tollgate::run::IN_MEMORY`] items, one of text answers
/// and one of structured answers; `read_by` adds a step that reads both
/// (skipped by its `when`, so it calls nothing): their answers are then
/// held in memory, not spilled.
fn two_fan_outs(read_by: bool) -> String {
    let items: Vec<String> = (0..ITEMS).map(|i| format!("item-{i}")).collect();
    let mut w = format!(
        "version: 1\nname: answers\ninputs:\n  xs: {{type: array, default: {}}}\nsteps:\n  label:\n    task: classify\n    for_each: inputs.xs\n    prompt: 'Label {{{{ item }}}}.'\n    max_output_tokens: 20\n  shape:\n    task: classify\n    for_each: inputs.xs\n    prompt: 'Shape {{{{ item }}}}.'\n    max_output_tokens: 40\n    output:\n      schema: {{type: object, required: [zeta, alpha]}}\n",
        serde_json::to_string(&items).unwrap()
    );
    if read_by {
        w.push_str("  reader:\n    task: write\n    when: 'steps.label.output | length > 100000 and steps.shape.output | length > 100000'\n    prompt: '{{ steps.label.output | length }} {{ steps.shape.output | length }}'\n    max_output_tokens: 5\n");
    }
    w
}

/// The pretty-printed `output` of step `id` in a pretty-printed run report:
/// the step's last field, up to the end of its object.
fn output_of<'a>(report: &'a str, id: &str) -> &'a str {
    let at = report
        .find(&format!("\"id\": \"{id}\""))
        .unwrap_or_else(|| panic!("step {id}"));
    let from = at + report[at..].find("\"output\": ").expect("an output");
    let to = from + report[from..].find("\n    }").expect("the step's end");
    &report[from..to]
}

/// A fan-out's answers that no step reads are spilled past
/// [`tollgate::run::IN_MEMORY`] items and read back in item order by
/// everything that shows them: stdout, `--format json`, `--out`'s
/// `<step>.json` and `run.json` are byte for byte what the same answers
/// held in memory (the same steps, read by another) give.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spilled_answers_print_and_write_byte_for_byte_as_held_ones() {
    const { assert!(ITEMS > tollgate::run::IN_MEMORY) };
    let fake = fake_llm::FakeServer::start().await;
    // Answers arrive out of item order; text with what JSON escapes, and
    // objects whose keys are not in sorted order, with floats.
    fake.set_handler(|r: &Recorded| {
        let n = item_of(r);
        let delay = std::time::Duration::from_millis((n * 7 % 5) as u64);
        if r.raw_body.contains("Shape item-") {
            Reply::text(format!(
                r#"{{"zeta": {n}, "alpha": "é\n{n}", "x": {}, "nested": {{"b": [true, null], "a": -0.0}}}}"#,
                n as f64 / 8.0 + 0.1
            ))
            .delay(delay)
        } else {
            Reply::text(format!("label {n}: \"quoted\"\ttab ✓\n")).delay(delay)
        }
    });
    let held = Project::new(&policy(&fake, ""), &two_fan_outs(true));
    let spilled = Project::new(&policy(&fake, ""), &two_fan_outs(false));
    let args = ["--format", "json", "--out", "out", "--concurrency", "16"];
    let (h, s) = (held.run(&args).await, spilled.run(&args).await);
    assert_eq!(h.status.code(), Some(0), "{}", transcript(&h));
    assert_eq!(s.status.code(), Some(0), "{}", transcript(&s));
    let (h_json, s_json) = (stdout(&h), stdout(&s));
    let (h_file, s_file) = (held.read("out/run.json"), spilled.read("out/run.json"));
    for id in ["label", "shape"] {
        let held_output = output_of(&h_json, id);
        assert_eq!(output_of(&s_json, id), held_output, "{id}");
        assert_eq!(output_of(&h_file, id), held_output, "{id}");
        assert_eq!(output_of(&s_file, id), held_output, "{id}");
        let file = format!("out/{id}.json");
        assert_eq!(spilled.read(&file), held.read(&file), "{id}");
    }
    // Every answer, in item order.
    let r = report(&s);
    for i in [0, 1, ITEMS / 2, ITEMS - 1] {
        assert_eq!(
            step(&r, "label")["output"][i],
            format!("label {i}: \"quoted\"\ttab ✓\n")
        );
        assert_eq!(step(&r, "shape")["output"][i]["zeta"], i);
    }
    assert_eq!(
        step(&r, "shape")["output"].as_array().map(Vec::len),
        Some(ITEMS)
    );

    // stdout's final answers: the two steps under their headings, each as
    // its `<step>.json`.
    let text = spilled.run(&[]).await;
    assert_eq!(text.status.code(), Some(0), "{}", transcript(&text));
    let want = format!(
        "## label\n\n{}\n\n## shape\n\n{}\n\n",
        held.read("out/label.json"),
        held.read("out/shape.json")
    );
    assert!(
        stdout(&text) == want,
        "stdout differs from the held answers"
    );
}

/// A resumed run gathers a spilled output anew from the journal's answers
/// and the calls it makes now: every answer, in item order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_spilled_fan_out_has_every_answer_in_item_order() {
    let fake = fake_llm::FakeServer::start().await;
    // Every hundredth item fails the first time: the step fails.
    fake.set_handler(|r: &Recorded| {
        let n = item_of(r);
        if n % 100 == 37 {
            Reply::auth_error()
        } else {
            Reply::text(format!("label {n}"))
                .delay(std::time::Duration::from_millis((n % 3) as u64))
        }
    });
    let project = Project::new(&policy(&fake, ""), &workflow());
    let out = project
        .run(&["--format", "json", "--concurrency", "16"])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let id = report(&out)["run_id"].as_str().unwrap().to_owned();
    assert_eq!(step(&report(&out), "label")["output"], Value::Null);

    fake.set_handler(|r: &Recorded| Reply::text(format!("label {}", item_of(r))));
    let failed = ITEMS.div_ceil(100);
    let again = project
        .tollgate(&["run", "--resume", &id, "--format", "json", "--out", "out"])
        .keys()
        .await;
    assert_eq!(again.status.code(), Some(0), "{}", transcript(&again));
    let r = report(&again);
    assert_eq!(r["resumed_calls"], ITEMS - failed);
    let want: Vec<String> = (0..ITEMS).map(|i| format!("label {i}")).collect();
    assert_eq!(step(&r, "label")["output"], serde_json::json!(want));
    let written: Value = serde_json::from_str(&project.read("out/label.json")).unwrap();
    assert_eq!(written, serde_json::json!(want));
}

/// `tollgate test` checks a spilled output read back whole, in item order:
/// the list equal to every answer passes, one answer off fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suite_checks_a_spilled_output_in_item_order() {
    let fake = fake_llm::FakeServer::start().await;
    fake.set_handler(|r: &Recorded| {
        let n = item_of(r);
        Reply::text(format!("label {n}")).delay(std::time::Duration::from_millis((n % 3) as u64))
    });
    let mut want: Vec<String> = (0..ITEMS).map(|i| format!("label {i}")).collect();
    let suite = |want: &[String]| {
        format!(
            "workflow: ../wf.yaml\npolicy: ../policy.yaml\ncases:\n  - name: all\n    expect:\n      label: {{ equals: {}, contains: 'label {}' }}\n",
            serde_json::to_string(want).unwrap(),
            ITEMS - 1
        )
    };
    let project =
        Project::new(&policy(&fake, ""), &workflow()).with("evals/labels.yaml", &suite(&want));
    let args = ["test", "evals/labels.yaml", "--format", "json"];
    let out = project.tollgate(&args).keys().await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));

    want.swap(3, 4);
    project.write("evals/labels.yaml", &suite(&want));
    let out = project.tollgate(&args).keys().await;
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let r = report(&out);
    let failures = r["suites"][0]["cases"][0]["runs"][0]["failures"]
        .as_array()
        .expect("failures");
    let got: Vec<&str> = failures
        .iter()
        .map(|f| f["assertion"].as_str().unwrap())
        .collect();
    assert_eq!(got, ["equals"]);
}
