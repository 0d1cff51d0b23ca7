//! The run journal end to end: crash and `--resume`, the response cache,
//! budgets over time, `tollgate runs` and `tollgate report` — the binary
//! against the loopback fakes, with the journal in the temporary project.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fake_llm::{FakeServer, Recorded, Reply};
use serde_json::Value;
use tokio::sync::Notify;
use tollgate::journal::{Clock, Journal};

use crate::support::{KEY, Ledger, Project, policy, report, step, transcript};

/// `tollgate ARGS` in the project, with the test keys and `env` (which
/// wins over them).
async fn tollgate(p: &Project, args: &[&str], env: &[(&str, &str)]) -> Output {
    p.tollgate(args).keys().envs(env).await
}

/// [`tollgate`] as a command to spawn, kill or signal.
fn command(p: &Project, args: &[&str], env: &[(&str, &str)]) -> tokio::process::Command {
    p.tollgate(args).keys().envs(env).into_tokio()
}

fn run_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "run",
        "wf.yaml",
        "--policy",
        "policy.yaml",
        "--format",
        "json",
    ];
    a.extend_from_slice(extra);
    a
}

fn journal_of(p: &Project) -> Journal {
    Journal::open(&p.path().join(".tollgate"), Clock::System).expect("the journal opens")
}

/// A deterministic answer for a request: the same request, the same answer,
/// on every fake.
fn answer_for(body: &str) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut h);
    format!("ans-{:016x}", h.finish())
}

/// Eight steps, eleven calls: two parallel roots, a four-item `for_each`,
/// branches that join, then a chain.
const CRASHY: &str = r#"version: 1
name: crashy
inputs:
  topic: { type: string, default: "disk quotas" }
  parts: { type: array, default: [intro, design, risks, rollout] }
steps:
  outline:  { task: write, prompt: "Outline a note on {{ inputs.topic }}", max_output_tokens: 50 }
  facts:    { task: summarize, prompt: "Facts about {{ inputs.topic }}", max_output_tokens: 50 }
  sections: { task: write, for_each: inputs.parts, prompt: "Write the {{ item }} section. Outline: {{ steps.outline.output }}", max_output_tokens: 50 }
  check:    { task: classify, prompt: "Check {{ steps.facts.output }}", max_output_tokens: 50 }
  title:    { task: summarize, prompt: "Title for {{ steps.outline.output }}", max_output_tokens: 50 }
  merge:    { task: write, prompt: "Merge {% for s in steps.sections.output %}{{ s }} {% endfor %}with {{ steps.check.output }}", max_output_tokens: 50 }
  review:   { task: write, prompt: "Review {{ steps.merge.output }} titled {{ steps.title.output }}", max_output_tokens: 50 }
  final:    { task: summarize, prompt: "Final: {{ steps.review.output }}", max_output_tokens: 50 }
"#;
const CRASHY_CALLS: usize = 11;

const DOOMED_KEYS: [(&str, &str); 3] = [
    ("TEST_OPENAI_KEY", DOOMED),
    ("TEST_ANTHROPIC_KEY", DOOMED),
    ("TEST_GEMINI_KEY", DOOMED),
];

/// The key the process to be killed presents (the others present `KEY`).
const DOOMED: &str = "sk-doomed";

/// Counts requests per distinct body and per API key. Of the requests that
/// present [`DOOMED`], answers the first `hold_at - 1` at once and holds the
/// rest (their answers would come after 300 s), saying when the
/// `hold_at`-th arrived.
struct Recorder {
    seen: Mutex<HashMap<String, usize>>,
    by_key: Mutex<HashMap<String, usize>>,
    by_answer: Mutex<HashMap<String, String>>,
    n: AtomicUsize,
    doomed: AtomicUsize,
    hold_at: usize,
    held: Notify,
}

impl Recorder {
    fn install(fake: &FakeServer, hold_at: usize) -> Arc<Recorder> {
        let rec = Arc::new(Recorder {
            seen: Mutex::new(HashMap::new()),
            by_key: Mutex::new(HashMap::new()),
            by_answer: Mutex::new(HashMap::new()),
            n: AtomicUsize::new(0),
            doomed: AtomicUsize::new(0),
            hold_at,
            held: Notify::new(),
        });
        let r = Arc::clone(&rec);
        fake.set_handler(move |req: &Recorded| {
            let answer = answer_for(&req.raw_body);
            // A request the killed process had only half sent is not a call.
            if req.body.is_null() {
                return Reply::text(answer);
            }
            *r.by_key
                .lock()
                .unwrap()
                .entry(req.presented_key().unwrap_or_default())
                .or_default() += 1;
            *r.seen
                .lock()
                .unwrap()
                .entry(req.raw_body.clone())
                .or_default() += 1;
            r.by_answer
                .lock()
                .unwrap()
                .insert(answer.clone(), req.raw_body.clone());
            let reply = Reply::text(answer).usage(20, 5);
            r.n.fetch_add(1, Ordering::SeqCst);
            if req.presented_key().as_deref() != Some(DOOMED) {
                return reply;
            }
            let n = r.doomed.fetch_add(1, Ordering::SeqCst) + 1;
            if n == r.hold_at {
                r.held.notify_one();
            }
            if n >= r.hold_at {
                reply.delay(Duration::from_secs(300))
            } else {
                reply
            }
        });
        rec
    }

    fn total(&self) -> usize {
        self.n.load(Ordering::SeqCst)
    }

    fn sent_with(&self, key: &str) -> usize {
        self.by_key.lock().unwrap().get(key).copied().unwrap_or(0)
    }
}

fn outputs(r: &Value) -> BTreeMap<String, Value> {
    r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].as_str().unwrap().to_owned(), s["output"].clone()))
        .collect()
}

async fn a_run_killed_at_any_call_resumes_to_the_same_outputs_without_paying_twice(ledger: Ledger) {
    // The uninterrupted run, for reference.
    let fake = FakeServer::start().await;
    let rec = Recorder::install(&fake, usize::MAX);
    let p = Project::new(&policy(&fake, ""), CRASHY).on(&ledger);
    let out = tollgate(&p, &run_args(&[]), &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let expected = outputs(&report(&out));
    assert_eq!(rec.total(), CRASHY_CALLS);
    assert_eq!(expected["sections"].as_array().unwrap().len(), 4);

    // Kill points that left the `for_each` step part done.
    let mut partial_fan_outs = 0;
    for kill_at in 1..=CRASHY_CALLS {
        let fake = FakeServer::start().await;
        let rec = Recorder::install(&fake, kill_at);
        let p = Project::new(&policy(&fake, ""), CRASHY).on(&ledger);
        let mut child = command(&p, &run_args(&[]), &DOOMED_KEYS)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The kill point: the kill_at-th request has reached the fake, and
        // it and every later one are held there; the kill_at - 1 answered
        // before it are in the journal — whatever the scheduling.
        tokio::time::timeout(Duration::from_secs(60), rec.held.notified())
            .await
            .unwrap_or_else(|_| panic!("request {kill_at} never came"));
        let journal = p.journal();
        let run = journal.run("last").unwrap().expect("the run is journaled");
        tokio::time::timeout(Duration::from_secs(60), async {
            while journal.finished_calls(&run.id).unwrap().len() < kill_at - 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("kill at {kill_at}: the answers were not journaled"));
        child.start_kill().unwrap(); // SIGKILL
        child.wait().await.unwrap();

        // What the journal holds as finished survived the kill: exactly the
        // calls answered before it.
        let run = journal.run(&run.id).unwrap().unwrap();
        assert_eq!(run.status, "interrupted", "kill at {kill_at}");
        let finished = journal.finished_calls(&run.id).unwrap();
        assert_eq!(finished.len(), kill_at - 1, "kill at {kill_at}");
        drop(journal);
        let sections_done = finished.keys().filter(|(s, _)| s == "sections").count();
        if (1..4).contains(&sections_done) {
            partial_fan_outs += 1;
        }

        // Without the cache: the journal alone keeps finished calls from being
        // sent again.
        let out = tollgate(
            &p,
            &["run", "--resume", &run.id, "--format", "json", "--no-cache"],
            &[],
        )
        .await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "kill at {kill_at}: {}",
            transcript(&out)
        );
        let r = report(&out);
        assert_eq!(outputs(&r), expected, "kill at {kill_at}");
        assert_eq!(r["run_id"], run.id.as_str());
        assert_eq!(r["resumed_calls"], finished.len(), "kill at {kill_at}");
        // The resume sent exactly the calls that had not finished…
        assert_eq!(
            rec.sent_with(KEY),
            CRASHY_CALLS - finished.len(),
            "kill at {kill_at}"
        );
        // …and no finished call was sent twice; nothing more than twice.
        let seen = rec.seen.lock().unwrap().clone();
        let by_answer = rec.by_answer.lock().unwrap().clone();
        for call in finished.values() {
            let body = &by_answer[call.output.as_str().unwrap()];
            assert_eq!(
                seen[body], 1,
                "kill at {kill_at}: a finished call was sent again"
            );
        }
        assert!(
            seen.values().all(|&n| n <= 2),
            "kill at {kill_at}: {seen:?}"
        );
        assert_eq!(seen.len(), CRASHY_CALLS);
    }
    // Its finished items were not sent again, the others were (above).
    assert!(partial_fan_outs > 0, "no kill point split the for_each");
}

/// The step a request of [`CRASHY`] belongs to, from its prompt.
fn crashy_step(body: &str) -> &'static str {
    [
        ("Outline a note", "outline"),
        ("Facts about", "facts"),
        ("Write the ", "sections"),
        ("Check ", "check"),
        ("Title for", "title"),
        ("Merge ", "merge"),
        ("Review ", "review"),
        ("Final: ", "final"),
    ]
    .into_iter()
    .find(|(prompt, _)| body.contains(prompt))
    .map(|(_, step)| step)
    .unwrap_or_else(|| panic!("not a CRASHY request: {body}"))
}

/// The steps of [`CRASHY`] a step reads.
fn crashy_needs(step: &str) -> &'static [&'static str] {
    match step {
        "sections" | "title" => &["outline"],
        "check" => &["facts"],
        "merge" => &["sections", "check"],
        "review" => &["merge", "title"],
        "final" => &["review"],
        _ => &[],
    }
}

/// Free calls (a local model) are only queued for the journal, which is
/// made durable before a step's dependants start: a kill at any call, with
/// no wait for the journal, loses at most free answers nothing was built
/// on yet — every step a sent request depends on is whole in the journal —
/// and the resume sends exactly the calls the journal does not hold, never
/// one it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_calls_killed_at_any_call_lose_nothing_a_dependant_used() {
    let free = |fake: &FakeServer| {
        policy(fake, "")
            .replace("use: flagship", "use: local")
            .replace("use: budget", "use: local")
            .replace("use: workhorse", "use: local")
    };
    let fake = FakeServer::start().await;
    fake.set_handler(|r| Reply::text(answer_for(&r.raw_body)).usage(20, 5));
    let p = Project::new(&free(&fake), CRASHY);
    let out = tollgate(&p, &run_args(&[]), &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let reference = report(&out);
    assert_eq!(reference["cost_usd"], 0.0, "the calls are free");
    let expected = outputs(&reference);

    for kill_at in 1..=CRASHY_CALLS {
        let fake = FakeServer::start().await;
        // Bodies sent, in order; from `kill_at` on, held (until the kill).
        let sent: Arc<Mutex<Vec<String>>> = Arc::default();
        let holding = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let held = Arc::new(Notify::new());
        {
            let (sent, holding, held) =
                (Arc::clone(&sent), Arc::clone(&holding), Arc::clone(&held));
            fake.set_handler(move |r: &Recorded| {
                let reply = Reply::text(answer_for(&r.raw_body)).usage(20, 5);
                if r.body.is_null() {
                    return reply;
                }
                let mut sent = sent.lock().unwrap();
                sent.push(r.raw_body.clone());
                if !holding.load(Ordering::SeqCst) || sent.len() < kill_at {
                    return reply;
                }
                if sent.len() == kill_at {
                    held.notify_one();
                }
                reply.delay(Duration::from_secs(300))
            });
        }
        let p = Project::new(&free(&fake), CRASHY);
        let mut child = command(&p, &run_args(&[]), &[])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(60), held.notified())
            .await
            .unwrap_or_else(|_| panic!("request {kill_at} never came"));
        // At once: whatever the writer had not committed is lost.
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        holding.store(false, Ordering::SeqCst);

        let journal = journal_of(&p);
        let run = journal.run("last").unwrap().expect("the run is journaled");
        let finished = journal.finished_calls(&run.id).unwrap();
        drop(journal);
        assert!(finished.len() < kill_at, "kill at {kill_at}");
        let whole = |step: &str| {
            let n = if step == "sections" { 4 } else { 1 };
            finished.keys().filter(|(s, _)| s == step).count() == n
        };
        let before_kill: Vec<String> = sent.lock().unwrap().clone();
        for body in &before_kill {
            for need in crashy_needs(crashy_step(body)) {
                assert!(
                    whole(need),
                    "kill at {kill_at}: `{}` was sent before `{need}` was durable",
                    crashy_step(body)
                );
            }
        }

        let out = tollgate(
            &p,
            &["run", "--resume", &run.id, "--format", "json", "--no-cache"],
            &[],
        )
        .await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "kill at {kill_at}: {}",
            transcript(&out)
        );
        let r = report(&out);
        assert_eq!(outputs(&r), expected, "kill at {kill_at}");
        assert_eq!(r["resumed_calls"], finished.len(), "kill at {kill_at}");
        let after: Vec<String> = sent.lock().unwrap()[before_kill.len()..].to_vec();
        // Exactly the calls the journal did not hold were sent again…
        assert_eq!(
            after.len(),
            CRASHY_CALLS - finished.len(),
            "kill at {kill_at}"
        );
        // …never one it held.
        for call in finished.values() {
            let answered = after
                .iter()
                .any(|b| answer_for(b) == call.output.as_str().unwrap());
            assert!(
                !answered,
                "kill at {kill_at}: a journaled call was sent again"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_refuses_a_changed_workflow_and_an_unknown_run() {
    let fake = FakeServer::start().await;
    // The last step fails: the run can be resumed.
    fake.set_handler(|r| {
        if r.raw_body.contains("Final:") {
            Reply::auth_error()
        } else {
            Reply::text(answer_for(&r.raw_body)).usage(20, 5)
        }
    });
    let p = Project::new(&policy(&fake, ""), CRASHY);
    let out = tollgate(&p, &run_args(&[]), &[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let id = report(&out)["run_id"].as_str().unwrap().to_owned();

    let out = tollgate(&p, &["run", "--resume", "r-20990101-000000-beef"], &[]).await;
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no run `r-20990101-000000-beef`"));

    std::fs::write(
        p.path().join("wf.yaml"),
        CRASHY.replace("Final: ", "In the end: "),
    )
    .unwrap();
    let n = fake.request_count();
    let out = tollgate(&p, &["run", "--resume", &id], &[]).await;
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot resume run {id}")), "{err}");
    assert!(err.contains("prompt files changed"), "{err}");
    assert_eq!(fake.request_count(), n, "nothing is sent");

    // Put back, with the provider fixed: `last` resumes it, and only the
    // failed step is sent.
    std::fs::write(p.path().join("wf.yaml"), CRASHY).unwrap();
    fake.set_handler(|r| Reply::text(answer_for(&r.raw_body)).usage(20, 5));
    let out = tollgate(&p, &["run", "--resume", "last", "--format", "json"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    assert_eq!(report(&out)["resumed_calls"], CRASHY_CALLS - 1);
    assert_eq!(fake.request_count(), n + 1);

    let out = tollgate(&p, &["runs", "--format", "json"], &[]).await;
    let runs: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(runs[0]["id"], id.as_str());
    assert_eq!(runs[0]["status"], "succeeded");
    assert_eq!(runs[0]["steps_done"], 8);
    assert_eq!(runs[0]["sessions"], 2);
}

const TWO_STEPS: &str = r#"version: 1
name: pair
inputs:
  ticket: { type: string, default: "It crashes when I save." }
steps:
  summarize: { task: summarize, prompt: "Summarize: {{ inputs.ticket }}", max_output_tokens: 100 }
  reply: { task: write, prompt: "Reply to: {{ steps.summarize.output }}", max_output_tokens: 100 }
"#;

fn plain_answers(fake: &FakeServer) {
    fake.set_handler(|r| match r.model().as_str() {
        "gpt-4.1-nano" => Reply::text("The app crashes on save.").usage(1000, 90),
        _ => Reply::text("Dear customer, we are on it.").usage(500, 40),
    });
}

async fn identical_requests_are_served_from_the_cache_until_the_ttl(ledger: Ledger) {
    let fake = FakeServer::start().await;
    plain_answers(&fake);
    let p = Project::new(&policy(&fake, "cache: { ttl: 1h }\n"), TWO_STEPS).on(&ledger);
    let t0 = [("TOLLGATE_TEST_NOW", "2026-11-20T10:00:00Z")];
    let first = report(&tollgate(&p, &run_args(&[]), &t0).await);
    assert_eq!(fake.request_count(), 2);
    let cost = first["cost_usd"].as_f64().unwrap();
    assert!(cost > 0.0);

    // The same run again: no provider call, nothing paid, the saving shown.
    let t1 = [("TOLLGATE_TEST_NOW", "2026-11-20T10:59:00Z")];
    let out = tollgate(&p, &run_args(&[]), &t1).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let second = report(&out);
    assert_eq!(
        fake.request_count(),
        2,
        "the second run made provider calls"
    );
    assert_eq!(second["cost_usd"], 0.0);
    assert_eq!(second["cache"]["hits"], 2);
    assert!((second["cache"]["saved_usd"].as_f64().unwrap() - cost).abs() < 1e-12);
    assert_eq!(outputs(&second), outputs(&first));
    assert_eq!(step(&second, "reply")["calls"][0]["source"], "cache");

    // The text summary says so.
    let out = tollgate(&p, &["run", "wf.yaml", "--policy", "policy.yaml"], &t1).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cache: 2 calls answered from the journal"),
        "{err}"
    );

    // --no-cache sends them again.
    let out = tollgate(&p, &run_args(&["--no-cache"]), &t1).await;
    assert_eq!(report(&out)["cache"]["hits"], 0);
    assert_eq!(fake.request_count(), 4);

    // Past the TTL (counted from the newest bought answer, 10:59), the
    // answers are bought again.
    let t2 = [("TOLLGATE_TEST_NOW", "2026-11-20T12:00:00Z")];
    let out = tollgate(&p, &run_args(&[]), &t2).await;
    assert_eq!(report(&out)["cache"]["hits"], 0);
    assert_eq!(fake.request_count(), 6);
    assert_no_key_in_journal(&p);
}

fn assert_no_key_in_journal(p: &Project) {
    if let Some(text) = p.ledger_text() {
        assert!(text.contains("summarize"), "the journal holds the runs");
        assert!(!text.contains(KEY), "the key is in the PostgreSQL journal");
        return;
    }
    for entry in std::fs::read_dir(p.path().join(".tollgate")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            assert!(!text.contains(KEY), "the key is in {}", path.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_invalid_and_cut_answers_are_never_cached() {
    let wf = r#"version: 1
name: shaky
steps:
  label: { task: classify, prompt: "bug or feature? It crashes.", max_output_tokens: 5, retries: 0, output: { schema: { type: string, enum: [bug, feature] } } }
  long: { task: summarize, prompt: "Summarize the manual.", max_output_tokens: 5, retries: 0 }
  broken: { task: summarize, prompt: "Summarize the logs.", max_output_tokens: 5, retries: 0, continue_on_error: true }
"#;
    let fake = FakeServer::start().await;
    fake.set_handler(|r| {
        if r.raw_body.contains("bug or feature") {
            Reply::text("maybe").usage(10, 1)
        } else if r.raw_body.contains("manual") {
            Reply::text("The manual says").usage(10, 5).truncated()
        } else {
            Reply::server_error()
        }
    });
    let p = Project::new(&policy(&fake, ""), wf);
    let out = tollgate(&p, &run_args(&[]), &[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    // label: asked again once with the schema error; long: once; broken: once.
    let first = fake.request_count();
    assert_eq!(first, 4);
    let out = tollgate(&p, &run_args(&[]), &[]).await;
    assert_eq!(report(&out)["cache"]["hits"], 0);
    assert_eq!(fake.request_count(), 2 * first, "something was cached");
    // The cut answer was still the step's output (flagged), and resumable.
    assert_eq!(step(&report(&out), "long")["output"], "The manual says");
}

async fn a_spent_daily_budget_blocks_cloud_calls_but_not_local_ones(ledger: Ledger) {
    let wf = r#"version: 1
name: daily
inputs:
  ticket: { type: string }
steps:
  summarize: { task: summarize, prompt: "Summarize: {{ inputs.ticket }}", max_output_tokens: 100 }
  local: { task: write, model: local, prompt: "Note: {{ inputs.ticket }}", max_output_tokens: 100 }
"#;
    let fake = FakeServer::start().await;
    fake.set_handler(|r| match r.model().as_str() {
        // $0.000136 at gpt-4.1-nano's prices; the worst case of a call is
        // about $0.000042.
        "gpt-4.1-nano" => Reply::text("summary").usage(1000, 90),
        _ => Reply::text("local note").usage(10, 2),
    });
    let p = Project::new(
        &policy(&fake, "budgets:\n  daily_usd: 0.00015\n  monthly_usd: 1\n"),
        wf,
    )
    .on(&ledger);
    let day1 = [("TOLLGATE_TEST_NOW", "2026-11-20T09:00:00Z")];
    let out = tollgate(&p, &run_args(&["-i", "ticket=first"]), &day1).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    assert_eq!(fake.request_count(), 2);

    // plan shows what is left today.
    let out = tollgate(
        &p,
        &[
            "plan",
            "wf.yaml",
            "-p",
            "policy.yaml",
            "-i",
            "ticket=second",
        ],
        &day1,
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("daily budget: $0.000014 left of $0.000150 today (UTC)"),
        "{text}"
    );
    assert!(text.contains("does NOT fit"), "{text}");
    let out = tollgate(
        &p,
        &[
            "plan",
            "wf.yaml",
            "-p",
            "policy.yaml",
            "-i",
            "ticket=second",
            "--format",
            "json",
        ],
        &day1,
    )
    .await;
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let left = &plan["budgets_left"];
    assert!((left["daily"]["spent_usd"].as_f64().unwrap() - 0.000136).abs() < 1e-12);
    assert!((left["monthly"]["left_usd"].as_f64().unwrap() - (1.0 - 0.000136)).abs() < 1e-12);

    // Later that day, another run (other input, so no cache): the cloud call
    // is not made, the local one is.
    let later = [("TOLLGATE_TEST_NOW", "2026-11-20T17:00:00Z")];
    let out = tollgate(&p, &run_args(&["-i", "ticket=second"]), &later).await;
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let r = report(&out);
    let models: Vec<String> = fake.requests()[2..].iter().map(Recorded::model).collect();
    assert_eq!(models, ["local-llm"], "only the local model was called");
    assert_eq!(step(&r, "local")["status"], "succeeded");
    let s = step(&r, "summarize");
    assert_eq!(s["status"], "failed");
    assert!(
        s["detail"].as_str().unwrap().contains("daily budget"),
        "{}",
        s["detail"]
    );

    // The next UTC day the budget is there again.
    let day2 = [("TOLLGATE_TEST_NOW", "2026-11-21T00:00:01Z")];
    let out = tollgate(&p, &run_args(&["-i", "ticket=third"]), &day2).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_that_cannot_be_opened_stops_the_run_before_any_call() {
    let fake = FakeServer::start().await;
    plain_answers(&fake);
    let p = Project::new(&policy(&fake, ""), TWO_STEPS);
    std::fs::create_dir(p.path().join(".tollgate")).unwrap();
    std::fs::write(
        p.path().join(".tollgate/state.db"),
        "not a database, 512 bytes long",
    )
    .unwrap();
    let out = tollgate(&p, &run_args(&[]), &[]).await;
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("run journal"));
    assert_eq!(fake.request_count(), 0);
}

/// The report of a journal made by real runs: two days, a cache hit, a
/// local model, and a flagship to compare with.
async fn report_shows_spend_estimates_and_savings(ledger: Ledger) {
    let wf = r#"version: 1
name: triage
inputs:
  ticket: { type: string }
  logs: { type: string, sensitivity: confidential, default: "" }
steps:
  summarize: { task: summarize, prompt: "Summarize: {{ inputs.ticket }}", max_output_tokens: 100 }
  fix_plan: { task: debug, prompt: "Plan a fix for {{ steps.summarize.output }}. Logs: {{ inputs.logs }}", max_output_tokens: 200 }
  reply: { task: write, prompt: "Reply about: {{ steps.summarize.output }}", max_output_tokens: 100 }
"#;
    let fake = FakeServer::start().await;
    fake.set_handler(|r| match r.model().as_str() {
        "gpt-4.1-nano" => Reply::text("Crash on save.").usage(1000, 90),
        "claude-sonnet-4-6" => Reply::text("We are on it.").usage(600, 120),
        _ => Reply::text("Check the write path.").usage(800, 150),
    });
    let p = Project::new(&policy(&fake, ""), wf).on(&ledger);
    let day = |t: &'static str| [("TOLLGATE_TEST_NOW", t)];
    for (input, at) in [
        ("ticket=It crashes", "2026-11-01T09:00:00Z"),
        ("ticket=It crashes", "2026-11-01T10:00:00Z"), // all from the cache
        ("ticket=It is slow", "2026-11-02T09:00:00Z"),
    ] {
        let out = tollgate(&p, &run_args(&["-i", input]), &day(at)).await;
        assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    }
    let now = day("2026-11-02T12:00:00Z");
    let text = tollgate(&p, &["report"], &now).await;
    assert_eq!(text.status.code(), Some(0), "{}", transcript(&text));
    insta::assert_snapshot!("report_text", String::from_utf8_lossy(&text.stdout));
    let json = tollgate(
        &p,
        &["report", "--format", "json", "--since", "2026-11-02"],
        &now,
    )
    .await;
    let v: Value = serde_json::from_slice(&json.stdout).unwrap();
    insta::assert_json_snapshot!("report_json_since", v);
    // The parts add up: flagship = cost + every saving.
    let t = &v["totals"];
    let sum = t["cost_usd"].as_f64().unwrap()
        + t["savings"]["routing_usd"].as_f64().unwrap()
        + t["savings"]["cache_usd"].as_f64().unwrap()
        + t["savings"]["prompt_cache_usd"].as_f64().unwrap()
        + t["savings"]["batch_usd"].as_f64().unwrap();
    assert!((sum - t["flagship_usd"].as_f64().unwrap()).abs() < 1e-9);

    let bad = tollgate(&p, &["report", "--since", "last week"], &now).await;
    assert_eq!(bad.status.code(), Some(2), "{}", transcript(&bad));

    let runs = tollgate(&p, &["runs"], &now).await;
    let text = String::from_utf8_lossy(&runs.stdout);
    assert_eq!(text.lines().count(), 4, "{text}");
    let newest: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        newest[1..],
        [
            "2026-11-02",
            "09:00",
            "triage",
            "succeeded",
            "3/3",
            "$0.000136"
        ],
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_still_going_in_another_process_is_not_resumed() {
    let fake = FakeServer::start().await;
    let rec = Recorder::install(&fake, 1);
    let p = Project::new(&policy(&fake, ""), TWO_STEPS);
    let mut child = command(&p, &run_args(&[]), &DOOMED_KEYS)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), rec.held.notified())
        .await
        .expect("the first request arrives");
    let out = tollgate(&p, &["run", "--resume", "last"], &[]).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is still running"), "{err}");
    assert_eq!(rec.total(), 1, "the resume sent nothing");
    // Once it is gone, it can be.
    let out = tollgate(&p, &["run", "--resume", "last", "--format", "json"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_folder_is_chosen_by_flag_then_environment_then_project() {
    let fake = FakeServer::start().await;
    plain_answers(&fake);
    let p = Project::new(&policy(&fake, ""), TWO_STEPS);
    let out = tollgate(&p, &run_args(&["--state", "flagged"]), &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let out = tollgate(&p, &run_args(&[]), &[("TOLLGATE_STATE", "from-env")]).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    assert!(p.path().join("flagged/state.db").is_file());
    assert!(p.path().join("from-env/state.db").is_file());
    assert!(!p.path().join(".tollgate/state.db").exists());
    // Two journals, two cold caches: each run paid for its calls.
    assert_eq!(fake.request_count(), 4);
    // From a subfolder, the project's own .tollgate/ is found.
    std::fs::create_dir(p.path().join("sub")).unwrap();
    let mut cmd = command(&p, &["runs", "--format", "json"], &[]);
    cmd.current_dir(p.path().join("sub"));
    let out = cmd.output().await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    let out = tollgate(&p, &run_args(&[]), &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let mut cmd = command(&p, &["runs", "--format", "json"], &[]);
    cmd.current_dir(p.path().join("sub"));
    let runs: Value = serde_json::from_slice(&cmd.output().await.unwrap().stdout).unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 1);
}

async fn a_run_stopped_by_its_budget_finishes_after_the_budget_is_raised(ledger: Ledger) {
    let fake = FakeServer::start().await;
    plain_answers(&fake);
    // summarize fits (worst case ≈ $0.00004), reply's worst case on the
    // workhorse does not fit beside what summarize spent.
    let p = Project::new(&policy(&fake, "budgets:\n  run_usd: 0.0002\n"), TWO_STEPS).on(&ledger);
    let out = tollgate(&p, &run_args(&[]), &[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let r = report(&out);
    assert_eq!(step(&r, "summarize")["status"], "succeeded");
    assert!(
        step(&r, "reply")["detail"]
            .as_str()
            .unwrap()
            .contains("run budget"),
        "{}",
        step(&r, "reply")["detail"]
    );
    assert_eq!(fake.request_count(), 1);
    let id = r["run_id"].as_str().unwrap().to_owned();

    // What summarize spent still counts: a budget that fits reply alone but
    // not both is not enough.
    std::fs::write(
        p.path().join("policy.yaml"),
        policy(&fake, "budgets:\n  run_usd: 0.0016\n"),
    )
    .unwrap();
    let out = tollgate(&p, &["run", "--resume", &id, "--format", "json"], &[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    assert_eq!(fake.request_count(), 1);

    std::fs::write(
        p.path().join("policy.yaml"),
        policy(&fake, "budgets:\n  run_usd: 0.01\n"),
    )
    .unwrap();
    let out = tollgate(&p, &["run", "--resume", &id, "--format", "json"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not the one run"), "{err}");
    let r = report(&out);
    assert_eq!(r["resumed_calls"], 1);
    assert!(r["earlier_cost_usd"].as_f64().unwrap() > 0.0);
    assert_eq!(fake.request_count(), 2, "summarize was not sent again");
}

async fn an_interrupted_run_is_journaled_as_cancelled_and_resumes(ledger: Ledger) {
    let fake = FakeServer::start().await;
    // The second request (reply) is held: Ctrl-C comes while it is in flight.
    let rec = Recorder::install(&fake, 2);
    let p = Project::new(&policy(&fake, ""), TWO_STEPS).on(&ledger);
    let child = command(&p, &run_args(&[]), &DOOMED_KEYS)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), rec.held.notified())
        .await
        .expect("the second request arrives");
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let out = child.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", transcript(&out));
    let id = report(&out)["run_id"].as_str().unwrap().to_owned();
    let run = p.journal().run(&id).unwrap().unwrap();
    assert_eq!((run.status.as_str(), run.steps_done), ("cancelled", 1));

    let out = tollgate(&p, &["run", "--resume", &id, "--format", "json"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    assert_eq!(report(&out)["resumed_calls"], 1);
    assert_eq!(
        rec.sent_with(KEY),
        1,
        "only the interrupted call was sent again"
    );
}

async fn a_daily_budget_holds_across_processes(ledger: Ledger) {
    use tokio::io::AsyncBufReadExt;
    let wf = r#"version: 1
name: one
inputs:
  ticket: { type: string }
steps:
  summarize: { task: summarize, prompt: "Summarize: {{ inputs.ticket }}", max_output_tokens: 100 }
"#;
    let fake = FakeServer::start().await;
    let rec = Recorder::install(&fake, 1);
    // One call's worst case (≈ $0.000041) fits the day, two do not.
    let p = Project::new(&policy(&fake, "budgets:\n  daily_usd: 0.00006\n"), wf).on(&ledger);
    let now = [("TOLLGATE_TEST_NOW", "2026-11-20T09:00:00Z")];
    let env_a: Vec<(&str, &str)> = DOOMED_KEYS.iter().chain(&now).copied().collect();
    let mut a = command(&p, &run_args(&["-i", "ticket=A"]), &env_a)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), rec.held.notified())
        .await
        .expect("A's call is in flight");

    // B starts while A's call is in flight: it waits, and says so.
    let mut b = command(&p, &run_args(&["-i", "ticket=B"]), &now)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(b.stderr.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with("wait   summarize on budget") {
                return;
            }
        }
        panic!("B never waited");
    })
    .await
    .expect("B waits for the budget");
    assert_eq!(rec.sent_with(KEY), 0, "B called beside A's call in flight");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    // A dies mid-call: its hold goes with it, and B goes ahead.
    a.start_kill().unwrap();
    a.wait().await.unwrap();
    let out = tokio::time::timeout(Duration::from_secs(60), b.wait_with_output())
        .await
        .expect("B finishes")
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    assert_eq!(rec.sent_with(KEY), 1);
}

/// A journaled answer is reused by a resume only for the prompt it was
/// given: when an upstream answer changed since (a `continue_on_error` step
/// that failed and now succeeds), the dependant is asked again.
async fn a_resume_asks_again_a_call_whose_upstream_answer_changed(ledger: Ledger) {
    let fake = FakeServer::start().await;
    let flaky = Arc::new(AtomicUsize::new(0));
    let first_session = Arc::clone(&flaky);
    fake.set_handler(move |r: &Recorded| {
        let body = &r.raw_body;
        let broken = first_session.load(Ordering::SeqCst) == 0;
        if body.contains("Name a colour") || body.contains("Count to three") {
            if broken {
                return Reply::auth_error();
            }
            return Reply::text(if body.contains("colour") {
                "teal"
            } else {
                "1 2 3"
            })
            .usage(5, 1);
        }
        // `use` repeats what it was given.
        let given = body
            .split("Use: ")
            .nth(1)
            .unwrap_or("")
            .chars()
            .take_while(|c| *c != '"')
            .collect::<String>();
        Reply::text(format!("used [{given}]")).usage(5, 2)
    });
    let wf = r#"version: 1
name: upstream
steps:
  colour:
    task: write
    prompt: "Name a colour."
    continue_on_error: true
  use:
    task: write
    prompt: "Use: {{ steps.colour.output }}"
  count:
    task: write
    prompt: "Count to three."
"#;
    let p = Project::new(&policy(&fake, ""), wf).on(&ledger);
    let out = tollgate(&p, &run_args(&["--no-cache"]), &[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let r = report(&out);
    assert_eq!(step(&r, "use")["output"], "used [None]");
    let id = r["run_id"].as_str().unwrap().to_owned();

    flaky.store(1, Ordering::SeqCst);
    let out = tollgate(
        &p,
        &["run", "--resume", &id, "--format", "json", "--no-cache"],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let r = report(&out);
    assert_eq!(step(&r, "colour")["output"], "teal");
    assert_eq!(
        step(&r, "use")["output"],
        "used [teal]",
        "a stale answer was reused"
    );
    assert_eq!(step(&r, "count")["output"], "1 2 3");
}

crate::on_both_ledgers!(
    a_run_killed_at_any_call_resumes_to_the_same_outputs_without_paying_twice,
    identical_requests_are_served_from_the_cache_until_the_ttl,
    a_spent_daily_budget_blocks_cloud_calls_but_not_local_ones,
    report_shows_spend_estimates_and_savings,
    a_run_stopped_by_its_budget_finishes_after_the_budget_is_raised,
    an_interrupted_run_is_journaled_as_cancelled_and_resumes,
    a_daily_budget_holds_across_processes,
    a_resume_asks_again_a_call_whose_upstream_answer_changed,
);
