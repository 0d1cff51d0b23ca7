//! A fan-out larger than a step keeps in memory: its call reports go to a
//! temporary file as they arrive, out of order, and every consumer reads
//! them back in item order with the same figures — the JSON report, the
//! `run.json` of `--out`, the text summary, and the response cache's
//! savings on a second run.

use fake_llm::{Recorded, Reply};
use serde_json::Value;

use crate::support::*;

/// More items than [`tollgate::run::IN_MEMORY`]: the reports are spilled.
const ITEMS: usize = 600;

/// The item number in a request (`Label item-N.`), for answers and usage
/// that differ per item, so a report filed under the wrong item shows.
fn item_of(r: &Recorded) -> usize {
    let b = &r.raw_body;
    let at = b.find("item-").expect("an item in the prompt") + 5;
    b[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

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
