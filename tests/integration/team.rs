//! Who ran it, and per-user budgets (issue 16 §1): each run records its
//! user, machine and CI system from the environment; `report --by` and
//! `runs --by` split by them; `budgets.per_user_daily_usd` holds one user's
//! day across every process and machine on the ledger. Each test runs on
//! both ledgers.

use std::time::Duration;

use fake_llm::{FakeServer, Reply};
use serde_json::Value;

use crate::on_both_ledgers;
use crate::support::{Ledger, Project, policy, report, stdout, transcript};

const ONE_CALL: &str = r#"version: 1
name: team
inputs:
  ticket: { type: string }
steps:
  summarize: { task: summarize, prompt: "Summarize: {{ inputs.ticket }}", max_output_tokens: 100 }
"#;

on_both_ledgers!(report_and_runs_split_by_who_ran_them);

/// Three runs by two users, one in CI on a named machine: `report --by`
/// splits calls and spend by user, machine and CI system (lines that add
/// up to the total), `runs --by user` groups the listed runs, text and
/// JSON; a hostile `$USER` reaches no output with its control characters.
async fn report_and_runs_split_by_who_ran_them(ledger: Ledger) {
    let fake = FakeServer::start().await;
    fake.set_default(Reply::text("summary").usage(1000, 50));
    let p = Project::new(&policy(&fake, ""), ONE_CALL).on(&ledger);
    let runs: [(&str, &[(&str, &str)]); 3] = [
        (
            "one",
            &[("USER", "ana"), ("TOLLGATE_MACHINE", "laptop-ana")],
        ),
        (
            "two",
            &[("USER", "ana"), ("TOLLGATE_MACHINE", "laptop-ana")],
        ),
        (
            "three",
            &[
                ("USER", "bo\u{1b}[2J"),
                ("TOLLGATE_MACHINE", "runner-7"),
                ("CI", "true"),
                ("GITHUB_ACTIONS", "true"),
            ],
        ),
    ];
    for (ticket, env) in runs {
        let out = p
            .run_env(&["--quiet", "-i", &format!("ticket={ticket}")], env)
            .keys()
            .await;
        assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    }

    let out = p
        .tollgate(&[
            "report", "--by", "user", "--by", "machine", "--by", "ci", "--format", "json",
        ])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let r = report(&out);
    let lines = |key: &str| -> Vec<(String, u64, f64)> {
        r[key]
            .as_array()
            .unwrap_or_else(|| panic!("{key} in {r}"))
            .iter()
            .map(|l| {
                (
                    l["key"].as_str().unwrap().to_owned(),
                    l["calls"].as_u64().unwrap(),
                    l["cost_usd"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    let total = r["totals"]["cost_usd"].as_f64().unwrap();
    let per_call = total / 3.0;
    assert!(per_call > 0.0, "{r}");
    let users = lines("by_user");
    assert_eq!(
        users
            .iter()
            .map(|l| (l.0.as_str(), l.1))
            .collect::<Vec<_>>(),
        [("ana", 2), ("bo?[2J", 1)],
        "{r}"
    );
    assert!((users[0].2 - 2.0 * per_call).abs() < 1e-9, "{r}");
    let machines = lines("by_machine");
    assert_eq!(
        machines
            .iter()
            .map(|l| (l.0.as_str(), l.1))
            .collect::<Vec<_>>(),
        [("laptop-ana", 2), ("runner-7", 1)]
    );
    let ci = lines("by_ci");
    assert_eq!(
        ci.iter().map(|l| (l.0.as_str(), l.1)).collect::<Vec<_>>(),
        [("-", 2), ("github-actions", 1)]
    );
    for split in [&users, &machines, &ci] {
        let sum: f64 = split.iter().map(|l| l.2).sum();
        assert!((sum - total).abs() < 1e-9, "{split:?} vs {total}");
    }
    // Without --by, the report is as it was.
    let plain = report(&p.tollgate(&["report", "--format", "json"]).await);
    assert!(plain.get("by_user").is_none(), "{plain}");

    let out = p.tollgate(&["report", "--by", "user"]).await;
    let text = stdout(&out);
    assert!(text.contains("\nBy user\nUSER "), "{text}");
    assert!(!text.contains('\u{1b}'), "{text:?}");

    let out = p
        .tollgate(&["runs", "--by", "user", "--format", "json"])
        .await;
    let runs: Value = report(&out);
    assert_eq!(runs["runs"].as_array().unwrap().len(), 3, "{runs}");
    assert_eq!(runs["runs"][0]["ci"], "github-actions", "newest first");
    let groups: Vec<(String, u64)> = runs["by_user"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["key"].as_str().unwrap().to_owned(),
                g["runs"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(groups, [("ana".to_owned(), 2), ("bo?[2J".to_owned(), 1)]);
    let out = p.tollgate(&["runs", "--by", "machine"]).await;
    let text = stdout(&out);
    assert!(text.contains("MACHINE"), "{text}");
    assert!(text.contains("\nBy machine (the runs listed)\n"), "{text}");
    assert!(!text.contains('\u{1b}'), "{text:?}");
}

/// gpt-4.1-nano's prices (catalog), dollars per token.
const INPUT_PRICE: f64 = 0.10 / 1e6;
const OUTPUT_PRICE: f64 = 0.40 / 1e6;
const REPORTED_INPUT: u64 = 10;

fn fan_out(max_output: u64) -> String {
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

on_both_ledgers!(two_users_in_several_processes_never_cross_their_own_day);

/// Rounds of 4 processes at once, 2 as `ana` and 2 as `bo` (on two
/// simulated machines when the ledger is shared), under a per-user daily
/// budget and no team budget: the money the fake was asked for on each
/// user's behalf — counted from the requests it received — never crosses
/// that user's budget, while real work gets through. Every user's demand
/// is well above their budget, so skipping the per-user check would fail.
async fn two_users_in_several_processes_never_cross_their_own_day(ledger: Ledger) {
    let seed = std::env::var("TOLLGATE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("seed {seed} (TOLLGATE_TEST_SEED={seed} replays it)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let fake = FakeServer::start().await;
    let mut refusal_named_the_user = false;
    for round in 0..4u32 {
        let max_output = rng.u64(200..=600);
        let output = rng.u64(max_output / 2..=max_output);
        let delay_ms = rng.u64(0..=20);
        fake.set_handler(move |_| {
            Reply::text("ok")
                .usage(REPORTED_INPUT, output)
                .delay(Duration::from_millis(fastrand::u64(0..=delay_ms)))
        });
        let call_cost = REPORTED_INPUT as f64 * INPUT_PRICE + output as f64 * OUTPUT_PRICE;
        // Each process asks for 4 to 8 calls; a user's budget has room for
        // 2 to 4 worst cases, of their 8 to 16 calls.
        let per_user = max_output as f64 * OUTPUT_PRICE * rng.f64().mul_add(2.0, 2.0);
        let policy = policy(
            &fake,
            &format!("budgets:\n  per_user_daily_usd: {per_user:.9}\n"),
        );
        let wf = fan_out(max_output);
        let mut machines = vec![Project::new(&policy, &wf).on(&ledger)];
        if matches!(ledger, Ledger::Postgres(_)) {
            machines.push(Project::new(&policy, &wf).on(&ledger));
        }
        let now = format!("2026-11-{:02}T09:00:00Z", round + 1);
        let before = fake.request_count();
        let runs = (0..4).map(|k| {
            let user = ["ana", "bo"][k % 2];
            let machine = &machines[(k / 2) % machines.len()];
            let list: Vec<String> = (0..rng.usize(4..=8))
                .map(|i| format!("{user}-r{round}-p{k}-item{i}"))
                .collect();
            let items = serde_json::to_string(&list).unwrap();
            let cmd = machine.run_env(
                &[
                    "--format",
                    "json",
                    "--quiet",
                    "-i",
                    &format!("items={items}"),
                ],
                &[
                    ("TOLLGATE_TEST_NOW", now.as_str()),
                    ("USER", user),
                    ("TOLLGATE_MACHINE", ["m1", "m2"][k / 2]),
                ],
            );
            async move { cmd.keys().await }
        });
        let outs = futures::future::join_all(runs.collect::<Vec<_>>()).await;
        for out in &outs {
            assert!(
                matches!(out.status.code(), Some(0 | 1)),
                "round {round} (seed {seed}): {}",
                transcript(out)
            );
            refusal_named_the_user |= stdout(out)
                .contains("would cross the per-user daily budget of `ana` (per_user_daily_usd");
        }
        let requests = &fake.requests()[before..];
        for user in ["ana", "bo"] {
            let calls = requests
                .iter()
                .filter(|r| r.raw_body.contains(&format!("{user}-r{round}-")))
                .count();
            let asked = calls as f64 * call_cost;
            assert!(
                asked <= per_user + 1e-12,
                "round {round} (seed {seed}): {user}'s {calls} calls cost ${asked:.9}, over their ${per_user:.9}"
            );
            assert!(
                calls >= 1,
                "round {round} (seed {seed}): {user} got no work through"
            );
        }
    }
    assert!(refusal_named_the_user, "a refusal names the user's budget");
}
