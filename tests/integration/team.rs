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

/// A loopback TCP proxy in front of the test PostgreSQL server that can be
/// told to hang: bytes already read are held, not forwarded, and new
/// connections are accepted and left waiting — a server that stops
/// answering, as the client sees it.
mod proxy {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    pub struct Proxy {
        pub port: u16,
        pub hang: Arc<AtomicBool>,
        /// New connections still to be refused (accepted and closed).
        refuse: Arc<AtomicUsize>,
        /// Both ends of every connection made, to cut them.
        open: Arc<Mutex<Vec<TcpStream>>>,
    }

    fn wait_while(hang: &AtomicBool) {
        while hang.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pipe(mut from: TcpStream, mut to: TcpStream, hang: Arc<AtomicBool>) {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            wait_while(&hang);
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
    }

    impl Proxy {
        /// Forwards to `upstream` (host:port) until told to hang.
        pub fn start(upstream: String) -> Proxy {
            let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
            let port = listener.local_addr().unwrap().port();
            let hang = Arc::new(AtomicBool::new(false));
            let refuse = Arc::new(AtomicUsize::new(0));
            let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
            let (h, r, o) = (Arc::clone(&hang), Arc::clone(&refuse), Arc::clone(&open));
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    let Ok(client) = client else { break };
                    if r.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok()
                    {
                        let _ = client.shutdown(std::net::Shutdown::Both);
                        continue;
                    }
                    let h = Arc::clone(&h);
                    let o = Arc::clone(&o);
                    let upstream = upstream.clone();
                    std::thread::spawn(move || {
                        wait_while(&h);
                        let Ok(server) = TcpStream::connect(&upstream) else {
                            return;
                        };
                        {
                            let mut open = o.lock().unwrap();
                            open.push(client.try_clone().unwrap());
                            open.push(server.try_clone().unwrap());
                        }
                        let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                        let h2 = Arc::clone(&h);
                        std::thread::spawn(move || pipe(c2, server, h2));
                        pipe(s2, client, h);
                    });
                }
            });
            Proxy {
                port,
                hang,
                refuse,
                open,
            }
        }

        /// Takes new connections again (after [`Proxy::cut`]).
        pub fn restore(&self) {
            self.refuse.store(0, Ordering::SeqCst);
        }

        /// Cuts every connection and refuses the next `refuse` ones: the
        /// database is gone for a while, then back.
        pub fn cut(&self, refuse: usize) {
            self.refuse.store(refuse, Ordering::SeqCst);
            for s in self.open.lock().unwrap().drain(..) {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

/// `url` with its host and port replaced by the proxy's, and a short
/// statement timeout (so a hung server is given up on in seconds).
/// A loopback proxy in front of the ledger at `url` (its host and port),
/// which the test can make hang or cut.
fn proxy_to(url: &str) -> proxy::Proxy {
    let upstream = url::Url::parse(url).unwrap();
    proxy::Proxy::start(format!(
        "{}:{}",
        upstream.host_str().unwrap(),
        upstream.port().unwrap_or(5432)
    ))
}

fn through(url: &str, port: u16) -> String {
    let mut u = url::Url::parse(url).unwrap();
    u.set_host(Some("127.0.0.1")).unwrap();
    u.set_port(Some(port)).unwrap();
    u.set_query(Some(
        "options=-c%20statement_timeout%3D500&connect_timeout=2",
    ));
    u.to_string()
}

const PAID_AND_FREE: &str = r#"version: 1
name: hung
inputs:
  items: { type: array }
steps:
  paid:
    task: summarize
    for_each: inputs.items
    prompt: "Summarize: {{ item }}"
    max_output_tokens: 50
  free:
    task: write
    model: local
    for_each: inputs.items
    prompt: "Note: {{ item }}"
    max_output_tokens: 50
"#;

/// The team database stops answering mid-run (after the first paid call
/// was sent): no further paid call is made — each is refused, saying the
/// ledger did not answer — the free calls all go on, and the run ends
/// instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_ledger_refuses_paid_calls_and_lets_free_ones_go_on() {
    let Some(Ledger::Postgres(db)) = Ledger::postgres() else {
        return;
    };
    let proxy = proxy_to(&db.url);
    let fake = FakeServer::start().await;
    let hang = std::sync::Arc::clone(&proxy.hang);
    fake.set_handler(move |r| {
        if r.model() == "gpt-4.1-nano" {
            // The database hangs while this paid call is out.
            hang.store(true, std::sync::atomic::Ordering::SeqCst);
            Reply::text("summary").usage(100, 10)
        } else {
            Reply::text("note").usage(10, 2)
        }
    });
    let p = Project::new(&policy(&fake, "budgets:\n  daily_usd: 1\n"), PAID_AND_FREE);
    let items = r#"items=["a","b","c","d"]"#;
    let out = p
        .run_env(
            &[
                "--format",
                "json",
                "--quiet",
                "--concurrency",
                "1",
                "-i",
                items,
            ],
            &[("TOLLGATE_STATE_URL", &through(&db.url, proxy.port))],
        )
        .keys()
        .await;
    let text = transcript(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let requests = fake.requests();
    let paid = requests
        .iter()
        .filter(|r| r.model() == "gpt-4.1-nano")
        .count();
    let free = requests.iter().filter(|r| r.model() == "local-llm").count();
    assert_eq!((paid, free), (1, 4), "{text}");
    let r = report(&out);
    assert_eq!(
        crate::support::step(&r, "free")["status"],
        "succeeded",
        "{text}"
    );
    assert_eq!(
        crate::support::step(&r, "paid")["status"],
        "failed",
        "{text}"
    );
    assert!(
        text.contains("budget cannot be checked (the team ledger postgres://")
            && text.contains("did not answer within 2.5s"),
        "{text}"
    );
    assert!(!text.contains("tollgate-test"), "no password shown: {text}");
    proxy.hang.store(false, std::sync::atomic::Ordering::SeqCst);
}

/// A database that accepts connections and never answers: commands give up
/// within the connection's bounds, exit 2, saying so.
#[test]
fn a_ledger_that_never_answers_is_given_up_on() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming() {
            held.push(c);
        }
    });
    let p = Project::empty();
    let url = format!(
        "postgres://team:s3cret-pw@127.0.0.1:{port}/ledger?connect_timeout=1&options=-c%20statement_timeout%3D200"
    );
    let out = p
        .tollgate(&["runs"])
        .env("TOLLGATE_STATE_URL", &url)
        .output();
    let text = transcript(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains(&format!(
            "cannot open the run journal postgres://team@127.0.0.1:{port}/ledger: no answer within"
        )),
        "{text}"
    );
    assert!(!text.contains("s3cret"), "{text}");
}

/// The connection to the team database is lost while a paid call is out
/// (every connection cut, the next few refused, then it is back): the paid
/// answer is kept and written once the database answers again, before the
/// run ends — whatever else was refused meanwhile, every paid answer the
/// provider gave is in the ledger, and the ledger's spend is the money
/// asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_answer_outlives_a_lost_connection() {
    let Some(Ledger::Postgres(db)) = Ledger::postgres() else {
        return;
    };
    let proxy = std::sync::Arc::new(proxy_to(&db.url));
    let fake = FakeServer::start().await;
    let cut = std::sync::Arc::clone(&proxy);
    let first = std::sync::atomic::AtomicBool::new(true);
    fake.set_handler(move |_| {
        if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
            cut.cut(3);
        }
        Reply::text("summary").usage(100, 10)
    });
    let wf = r#"version: 1
name: lost
inputs:
  items: { type: array }
steps:
  paid:
    task: summarize
    for_each: inputs.items
    prompt: "Summarize: {{ item }}"
    max_output_tokens: 50
"#;
    let p = Project::new(&policy(&fake, "budgets:\n  daily_usd: 1\n"), wf);
    let out = p
        .run_env(
            &[
                "--format",
                "json",
                "--quiet",
                "--concurrency",
                "1",
                "-i",
                r#"items=["a","b","c"]"#,
            ],
            &[("TOLLGATE_STATE_URL", &through(&db.url, proxy.port))],
        )
        .keys()
        .await;
    let text = transcript(&out);
    assert!(matches!(out.status.code(), Some(0 | 1)), "{text}");
    let asked = fake.request_count();
    assert!(asked >= 1, "{text}");
    let run_id = report(&out)["run_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let journal = tollgate::journal::Journal::open_postgres(
        &db.state_url(),
        tollgate::journal::Clock::System,
    )
    .unwrap();
    let answered = journal.finished_calls(&run_id).unwrap();
    assert_eq!(
        answered.len(),
        asked,
        "every paid answer is journaled: {text}"
    );
    assert!(
        answered.contains_key(&("paid".to_owned(), Some(0))),
        "{text}"
    );
    let cost = 100.0 * INPUT_PRICE + 10.0 * OUTPUT_PRICE;
    let spent = journal.spent_since(0).unwrap();
    assert!(
        (spent - asked as f64 * cost).abs() < 1e-12,
        "the ledger says ${spent}, the provider was asked for {asked} calls: {text}"
    );
}

/// Two machines (two checkouts, one team database): a run killed on `m1`
/// stays `running` to `m2` while its lease holds (a pid says nothing
/// across machines), so `m2` refuses to resume it; once the lease lapses,
/// `m2` resumes it — if its workflow files match — answering the finished
/// call from the ledger and paying only for the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_on_one_machine_is_resumed_on_another() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let Some(ledger) = Ledger::postgres() else {
        return;
    };
    let Ledger::Postgres(db) = &ledger else {
        unreachable!()
    };
    let fake = FakeServer::start().await;
    let slow = std::sync::Arc::new(AtomicBool::new(false));
    let s = std::sync::Arc::clone(&slow);
    fake.set_handler(move |_| {
        // After the first answer, the next call hangs until the kill.
        let delay = if s.swap(true, Ordering::SeqCst) {
            300
        } else {
            0
        };
        Reply::text("summary")
            .usage(100, 10)
            .delay(Duration::from_secs(delay))
    });
    let wf = fan_out(50);
    let policy = policy(&fake, "");
    let m1 = Project::new(&policy, &wf).on(&ledger);
    let m2 = Project::new(&policy, &wf).on(&ledger);
    let items = r#"items=["a","b","c"]"#;
    let mut child = m1
        .run_env(
            &["--quiet", "--concurrency", "1", "-i", items],
            &[("TOLLGATE_MACHINE", "m1")],
        )
        .keys()
        .into_tokio()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let journal = m1.journal();
    let id = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Some(run) = journal.run("last").unwrap() {
                if journal.finished_calls(&run.id).unwrap().len() == 1 && fake.request_count() == 2
                {
                    return run.id;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the first answer is journaled and the second call is out");
    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();
    fake.set_handler(|_| Reply::text("summary").usage(100, 10));

    let on_m2 = [("TOLLGATE_MACHINE", "m2")];
    let resume = ["--format", "json", "--quiet", "--resume", id.as_str()];
    let out = m2.run_env(&resume, &on_m2).keys().await;
    let text = transcript(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("is still running (process "), "{text}");
    assert!(text.contains(" on machine m1)"), "{text}");

    // A minute later, as the database's clock sees it.
    db.exec(&format!(
        "UPDATE runs SET lease_expires = clock_timestamp() - interval '1 second' WHERE id = '{id}'"
    ));
    // Other workflow files: refused, as on one machine.
    m2.write("wf.yaml", &fan_out(60));
    let out = m2.run_env(&resume, &on_m2).keys().await;
    let text = transcript(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("changed since the run started"), "{text}");
    m2.write("wf.yaml", &wf);

    let before = fake.request_count();
    let out = m2.run_env(&resume, &on_m2).keys().await;
    let text = transcript(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let r = report(&out);
    assert_eq!(r["run_id"], id.as_str());
    assert_eq!(r["resumed_calls"], 1, "{text}");
    assert_eq!(
        fake.request_count() - before,
        2,
        "only b and c are paid for"
    );
    let run = journal.run(&id).unwrap().unwrap();
    assert_eq!(
        (run.status.as_str(), run.machine.as_str(), run.sessions),
        ("succeeded", "m2", 2)
    );
}

/// The team database goes away while a paid call is out and stays away
/// until the run exits: the paid answer is kept in the state folder's spill
/// file (said once, with where and how to send it), the run fails only the
/// calls it could not check; `report` while the database is away says
/// what is kept. Once it is back, the next command that opens the ledger
/// (`runs`) sends the record — once: `report` counts its spend exactly
/// once, `ledger sync` finds nothing more — and a resume answers the call
/// from the ledger instead of paying for it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_answer_outlives_an_outage_until_exit_in_the_spill() {
    let Some(Ledger::Postgres(db)) = Ledger::postgres() else {
        return;
    };
    let proxy = std::sync::Arc::new(proxy_to(&db.url));
    let fake = FakeServer::start().await;
    let cut = std::sync::Arc::clone(&proxy);
    let first = std::sync::atomic::AtomicBool::new(true);
    fake.set_handler(move |_| {
        if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
            // Gone until the test says otherwise.
            cut.cut(usize::MAX);
        }
        Reply::text("summary").usage(100, 10)
    });
    let wf = r#"version: 1
name: outage
inputs:
  items: { type: array }
steps:
  paid:
    task: summarize
    for_each: inputs.items
    prompt: "Summarize: {{ item }}"
    max_output_tokens: 50
"#;
    let p = Project::new(&policy(&fake, "budgets:\n  daily_usd: 1\n"), wf);
    let ledger = [("TOLLGATE_STATE_URL", through(&db.url, proxy.port))];
    let ledger: Vec<(&str, &str)> = ledger.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = p
        .run_env(
            &[
                "--format",
                "json",
                "--quiet",
                "--concurrency",
                "1",
                "-i",
                r#"items=["a","b","c"]"#,
            ],
            &ledger,
        )
        .keys()
        .await;
    let text = transcript(&out);
    // The other items were refused (their budget could not be checked).
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert_eq!(fake.request_count(), 1, "{text}");
    let run_id = report(&out)["run_id"].as_str().unwrap().to_owned();
    // As words: the diagnostic wraps its lines.
    let err = crate::support::stderr(&out)
        .split_whitespace()
        .filter(|w| *w != "│")
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(
        err.matches("could not be written to the team ledger")
            .count(),
        1,
        "said once: {text}"
    );
    assert!(
        // The paid answer, and the two refusals (call records too).
        err.contains("3 call records ($0.000014 spent)")
            && err.contains("kept in ")
            && err.contains("spill-"),
        "{text}"
    );
    assert!(err.contains("tollgate ledger sync"), "{text}");
    assert!(!text.contains("tollgate-test"), "no password shown: {text}");
    let spill = std::fs::read_dir(p.path().join(".tollgate"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .find(|n| n.starts_with("spill-") && n.ends_with(".sqlite"))
        .expect("a spill file in the state folder");
    let direct = tollgate::journal::Journal::open_postgres(
        &db.state_url(),
        tollgate::journal::Clock::System,
    )
    .unwrap();
    assert!(
        direct.finished_calls(&run_id).unwrap().is_empty(),
        "not in the ledger yet"
    );

    // Still away: `report` cannot read the ledger, and says what is kept.
    let out = p.tollgate_env(&["report"], &ledger).await;
    let text = transcript(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("3 call records ($0.000014 spent)"), "{text}");

    // Back: `runs` sends it.
    proxy.restore();
    let out = p.tollgate_env(&["runs"], &ledger).await;
    let text = transcript(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("sent 3 call records kept in ")
            && text.contains(&spill)
            && text.contains("(0 already there)"),
        "{text}"
    );
    assert!(!text.contains("could not be written"), "{text}");
    let cost = 100.0 * INPUT_PRICE + 10.0 * OUTPUT_PRICE;
    let answered = direct.finished_calls(&run_id).unwrap();
    assert_eq!(answered.len(), 1, "{text}");
    assert!((direct.spent_since(0).unwrap() - cost).abs() < 1e-12);

    // Sending again writes nothing.
    let out = p
        .tollgate_env(&["ledger", "sync", "--format", "json"], &ledger)
        .await;
    let text = transcript(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let synced = report(&out);
    assert_eq!(
        (synced["sent"].as_u64(), synced["left"].as_u64()),
        (Some(0), Some(0)),
        "{text}"
    );

    // The resume pays only for the two calls never made.
    let out = p
        .run_env(
            &["--format", "json", "--quiet", "--resume", &run_id],
            &ledger,
        )
        .keys()
        .await;
    let text = transcript(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(
        fake.request_count(),
        3,
        "the first answer is not bought again: {text}"
    );
    let r = report(
        &p.tollgate_env(&["report", "--format", "json"], &ledger)
            .await,
    );
    assert_eq!(r["totals"]["calls"], 3, "{r}");
    assert!(
        (r["totals"]["cost_usd"].as_f64().unwrap() - 3.0 * cost).abs() < 1e-9,
        "each answer counted once: {r}"
    );
}

/// A spill file that is not one (garbage where the records should be):
/// `ledger sync` says which file and why (exit 2); `report` still reports,
/// warning about it; `run` refuses to start (a resume must not miss
/// spilled answers) — never a panic. Without a team ledger, `ledger sync`
/// says what it needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_spill_file_is_a_clear_error() {
    let out = Project::empty().tollgate(&["ledger", "sync"]).await;
    let text = transcript(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("no team ledger is set"), "{text}");

    let Some(ledger) = Ledger::postgres() else {
        return;
    };
    let fake = FakeServer::start().await;
    fake.set_default(Reply::text("summary").usage(100, 10));
    let p = Project::new(&policy(&fake, ""), ONE_CALL).on(&ledger);
    let out = p.tollgate(&["ledger", "sync", "--format", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let synced = report(&out);
    assert_eq!(
        (synced["sent"].as_u64(), synced["left"].as_u64()),
        (Some(0), Some(0))
    );
    let spill = synced["spill"].as_str().unwrap().to_owned();
    assert!(
        !std::path::Path::new(&spill).exists(),
        "nothing spilled, no file"
    );
    std::fs::create_dir_all(std::path::Path::new(&spill).parent().unwrap()).unwrap();
    std::fs::write(&spill, b"\x00garbage, not SQLite\n".repeat(500)).unwrap();

    let out = p.tollgate(&["ledger", "sync"]).await;
    let text = transcript(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    let flat = text
        .split_whitespace()
        .filter(|w| *w != "│")
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        flat.contains(&format!("the spill file {spill}")) && flat.contains("not a database"),
        "{text}"
    );
    let out = p.tollgate(&["report"]).await;
    let text = transcript(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("not a database"), "{text}");
    let out = p.run(&["-i", "ticket=x"]).await;
    let text = transcript(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("not a database"), "{text}");
    assert_eq!(fake.request_count(), 0, "{text}");
}

/// Killed during the outage (SIGKILL, nothing runs at exit): the paid
/// answer was acknowledged from the spill file, so it survives the kill
/// and the next command sends it once the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_answer_spilled_survives_a_kill() {
    let Some(Ledger::Postgres(db)) = Ledger::postgres() else {
        return;
    };
    let proxy = std::sync::Arc::new(proxy_to(&db.url));
    let fake = FakeServer::start().await;
    let cut = std::sync::Arc::clone(&proxy);
    fake.set_handler(move |r| {
        if r.model() == "gpt-4.1-nano" {
            cut.cut(usize::MAX);
            Reply::text("summary").usage(100, 10)
        } else {
            // The free step after it hangs until the kill.
            Reply::text("note").delay(Duration::from_secs(300))
        }
    });
    let wf = r#"version: 1
name: killed
inputs:
  ticket: { type: string }
steps:
  paid: { task: summarize, prompt: "Summarize: {{ inputs.ticket }}", max_output_tokens: 50 }
  free: { task: write, model: local, prompt: "Note: {{ steps.paid.output }}", max_output_tokens: 50 }
"#;
    let p = Project::new(&policy(&fake, "budgets:\n  daily_usd: 1\n"), wf);
    let url = through(&db.url, proxy.port);
    let ledger = [("TOLLGATE_STATE_URL", url.as_str())];
    let mut child = p
        .run_env(&["--quiet", "-i", "ticket=x"], &ledger)
        .keys()
        .into_tokio()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let state = p.path().join(".tollgate");
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let free_sent = fake.requests().iter().any(|r| r.model() == "local-llm");
            let spilled = std::fs::read_dir(&state)
                .into_iter()
                .flatten()
                .flatten()
                .any(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.starts_with("spill-")
                        && name.ends_with(".sqlite")
                        && tollgate::journal::spill::unsent(&e.path()).is_ok_and(|u| u.records == 1)
                });
            if free_sent && spilled {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the paid answer is spilled and the free call is out");
    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();

    proxy.restore();
    let out = p
        .tollgate_env(&["report", "--format", "json"], &ledger)
        .await;
    let text = transcript(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("sent 1 call record kept in "), "{text}");
    let r = report(&out);
    let cost = 100.0 * INPUT_PRICE + 10.0 * OUTPUT_PRICE;
    assert_eq!(r["totals"]["calls"], 1, "{r}");
    assert!(
        (r["totals"]["cost_usd"].as_f64().unwrap() - cost).abs() < 1e-12,
        "{r}"
    );
}

/// A live suite whose paid answer cannot be recorded anywhere — the ledger
/// gone mid-call and no spill folder to keep it in — errors the case with
/// why: a suite must not pass while its spend is missing from the journal
/// (the error was dropped: a test case listens to no run events).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suite_whose_paid_answer_cannot_be_recorded_errors_the_case() {
    let Some(Ledger::Postgres(db)) = Ledger::postgres() else {
        return;
    };
    let proxy = std::sync::Arc::new(proxy_to(&db.url));
    let fake = FakeServer::start().await;
    let cut = std::sync::Arc::clone(&proxy);
    fake.set_handler(move |_| {
        cut.cut(usize::MAX);
        Reply::text("summary").usage(100, 10)
    });
    let wf = "version: 1\nname: outage\ninputs:\n  text: { type: string }\nsteps:\n  paid:\n    task: summarize\n    prompt: \"Summarize: {{ inputs.text }}\"\n    max_output_tokens: 50\n";
    let p = Project::new(&policy(&fake, ""), wf);
    std::fs::write(
        p.path().join("suite.yaml"),
        "workflow: wf.yaml\npolicy: policy.yaml\ncases:\n  - name: one\n    inputs: { text: hello }\n    expect:\n      paid: { contains: summary }\n",
    )
    .unwrap();
    // The spill's folder cannot be made: a file stands where it would be.
    let state = p.path().join("state-is-a-file");
    std::fs::write(&state, "not a folder").unwrap();
    let url = through(&db.url, proxy.port);
    let out = p
        .tollgate_env(
            &[
                "test",
                "suite.yaml",
                "--format",
                "json",
                "--state",
                state.to_str().unwrap(),
            ],
            &[("TOLLGATE_STATE_URL", url.as_str())],
        )
        .keys()
        .await;
    let text = transcript(&out);
    assert_eq!(fake.request_count(), 1, "{text}");
    assert_eq!(out.status.code(), Some(1), "{text}");
    let results = report(&out);
    let case = &results["suites"][0]["cases"][0];
    assert_eq!(case["outcome"], "errored", "{text}");
    let why = case["runs"][0]["error"].as_str().unwrap_or_default();
    assert!(
        why.starts_with("the run journal could not record this run's calls"),
        "{text}"
    );
}
