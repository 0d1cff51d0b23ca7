//! The team ledger (issue 16 §1): several runners on several machines share
//! one PostgreSQL journal and so one daily budget. Two simulated machines
//! (two checkouts, each with its own project and state folder) run two
//! processes each, all at once, against the loopback fake; whatever the
//! interleaving, the money the fake was asked for never crosses the day's
//! budget.

use std::time::Duration;

use fake_llm::{FakeServer, Reply};

use crate::support::{Ledger, Project, policy, transcript};

/// gpt-4.1-nano's prices (catalog), dollars per token.
const INPUT_PRICE: f64 = 0.10 / 1e6;
const OUTPUT_PRICE: f64 = 0.40 / 1e6;
/// Input tokens the fake reports for every call (below what tollgate
/// counts, so each call costs less than its worst case).
const REPORTED_INPUT: u64 = 10;

fn workflow(max_output: u64) -> String {
    format!(
        r#"version: 1
name: team
inputs:
  items: {{ type: array }}
steps:
  label:
    task: summarize
    for_each: inputs.items
    prompt: "Summarize: {{{{ item }}}}"
    max_output_tokens: {max_output}
"#
    )
}

/// 20 randomized rounds (their seed printed, to replay one), each on its
/// own UTC day of one shared database: 4 processes, 2 per machine, a
/// random number of items each, a random output size and a daily budget
/// that lets only part of the work through. The money asked of the fake —
/// counted from the requests it received, not from the journal — never
/// crosses the budget; and the budget binds (calls are refused) while
/// letting real work through (calls are made).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_runners_on_two_machines_never_cross_a_shared_daily_budget() {
    let Some(ledger) = Ledger::postgres() else {
        return;
    };
    let seed = std::env::var("TOLLGATE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("seed {seed} (TOLLGATE_TEST_SEED={seed} replays it)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let fake = FakeServer::start().await;
    let (mut made, mut refused, mut worst_ratio) = (0usize, 0usize, 0.0f64);
    for round in 0..20u32 {
        let max_output = rng.u64(200..=600);
        let output = rng.u64(max_output / 2..=max_output);
        let delay_ms = rng.u64(0..=25);
        fake.set_handler(move |_| {
            Reply::text("ok")
                .usage(REPORTED_INPUT, output)
                .delay(Duration::from_millis(fastrand::u64(0..=delay_ms)))
        });
        let call_cost = REPORTED_INPUT as f64 * INPUT_PRICE + output as f64 * OUTPUT_PRICE;
        let items: Vec<usize> = (0..4).map(|_| rng.usize(3..=8)).collect();
        let total: usize = items.iter().sum();
        // Room for 25% to 65% of the round's calls at their worst case.
        let budget = total as f64 * max_output as f64 * OUTPUT_PRICE * rng.f64().mul_add(0.4, 0.25);
        let policy = policy(&fake, &format!("budgets:\n  daily_usd: {budget:.9}\n"));
        let wf = workflow(max_output);
        let machines = [
            Project::new(&policy, &wf).on(&ledger),
            Project::new(&policy, &wf).on(&ledger),
        ];
        let now = format!("2026-11-{:02}T09:00:00Z", round + 1);
        let before = fake.request_count();
        let runs = items.iter().enumerate().map(|(k, &n)| {
            let list: Vec<String> = (0..n).map(|i| format!("r{round}-p{k}-item{i}")).collect();
            let items = serde_json::to_string(&list).unwrap();
            let cmd = machines[k % 2].run_env(
                &[
                    "--format",
                    "json",
                    "--quiet",
                    "-i",
                    &format!("items={items}"),
                ],
                &[("TOLLGATE_TEST_NOW", now.as_str())],
            );
            async move { cmd.keys().await }
        });
        let outs = futures::future::join_all(runs).await;
        for out in &outs {
            // Succeeded, or stopped by the budget: never a usage error.
            assert!(
                matches!(out.status.code(), Some(0 | 1)),
                "round {round} (seed {seed}): {}",
                transcript(out)
            );
        }
        let calls = fake.request_count() - before;
        let asked = calls as f64 * call_cost;
        assert!(
            asked <= budget + 1e-12,
            "round {round} (seed {seed}): {calls} calls cost ${asked:.9}, over the daily ${budget:.9}"
        );
        // The ledger agrees with the fake.
        let journal = machines[0].journal();
        let at: jiff::Timestamp = now.parse().unwrap();
        let (day, _) = tollgate::journal::period_starts(at.as_millisecond());
        let spent = journal.spent_since(day).unwrap();
        assert!(
            (spent - asked).abs() < 1e-9,
            "round {round}: the ledger says ${spent:.9}, the fake ${asked:.9}"
        );
        made += calls;
        refused += total - calls;
        worst_ratio = worst_ratio.max(asked / budget);
    }
    eprintln!(
        "20 rounds: {made} calls made, {refused} refused; the fullest day used {:.1}% of its budget, none over",
        worst_ratio * 100.0
    );
    assert!(
        made > 0 && refused > 0,
        "the budget must bind and let work through"
    );
}

/// The state URL is a secret: an unreachable database, a wrong scheme —
/// the error names the URL without its password, exit 2, before anything
/// runs.
#[test]
fn a_state_url_password_never_reaches_output() {
    let p = Project::empty();
    for (url, says) in [
        (
            "postgres://team:hunter2-s3cret@127.0.0.1:1/ledger?password=hunter2-s3cret",
            "cannot open the run journal postgres://team@127.0.0.1:1/ledger: ",
        ),
        (
            "mysql://team:hunter2-s3cret@db/ledger",
            "TOLLGATE_STATE_URL has the scheme `mysql`; expected postgres://",
        ),
    ] {
        let out = p
            .tollgate(&["runs"])
            .env("TOLLGATE_STATE_URL", url)
            .output();
        let text = transcript(&out);
        assert_eq!(out.status.code(), Some(2), "{text}");
        assert!(text.contains(says), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }
}
