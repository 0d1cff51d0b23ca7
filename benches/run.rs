//! `cargo bench --bench run`: the executor against the loopback fake.
//!
//! (a) Engine overhead per call: 2,000 independent one-call steps, one at a
//!     time, against a fake answering at once — compared with a bare reqwest
//!     loop posting the same requests to the same fake in the same process.
//! (b) Throughput: 1,000 calls with 50 ms of fake latency and 16 in flight —
//!     wall time against the ideal ceil(1000/16) × 50 ms.
//! (c) Batch mode: one `latency: batch` step fanned out over 1,000 items
//!     through the fake's OpenAI Batch API (upload, create, two polls 10 ms
//!     apart, download, map back, validate) — wall time of the run.
//! (d) Journal overhead: (a) again with the run journal on (a fresh SQLite
//!     file per run, WAL, synchronous=FULL, the cache looked up before every
//!     call), against (a) without it: the cost per step of making runs
//!     durable.
//! Each figure is the median of 3 runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_llm::{BatchScript, FakeServer, Reply};
use tokio_util::sync::CancellationToken;
use tollgate::analyze;
use tollgate::diagnostic::SourceFile;
use tollgate::inputs;
use tollgate::journal::{Clock, Journal, NewRun};
use tollgate::plan;
use tollgate::policy;
use tollgate::run::{self, Job, Providers, RunJournal, RunOptions};
use tollgate::schema::Format;
use tollgate::workflow::{self, Loaded, Workflow};
use tollgate::yaml::Document;

fn policy_for(fake: &FakeServer, concurrency: usize) -> policy::Policy {
    compile_policy(format!(
        "version: 1\nproviders:\n  fake: {{ kind: openai-compatible, base_url: \"{}/v1\", limits: {{ concurrency: {concurrency} }} }}\nmodels:\n  m: {{ provider: fake, model: bench, tier: local, context_window: 100000 }}\nrules:\n  - {{ name: all, use: m }}\n",
        fake.base_url()
    ))
}

fn compile_policy(text: String) -> policy::Policy {
    let doc = Document::parse(SourceFile::new("bench-policy.yaml", text)).unwrap();
    let file: Loaded<policy::PolicyFile> = workflow::from_document(doc, Format::Policy).unwrap();
    let (p, d) = policy::compile(
        &file.value,
        &file.doc,
        tollgate::catalog::Catalog::builtin(),
    );
    assert!(d.is_empty(), "{d:?}");
    p
}

fn workflow_of(n: usize) -> analyze::Analysis {
    let mut y = String::from("version: 1\nname: bench\nsteps:\n");
    for i in 0..n {
        y.push_str(&format!(
            "  s{i}: {{ task: write, prompt: \"Say hello number {i}.\", max_output_tokens: 16 }}\n"
        ));
    }
    let doc = Document::parse(SourceFile::new("bench.yaml", y)).unwrap();
    let w: Loaded<Workflow> = workflow::from_document(doc, Format::Workflow).unwrap();
    analyze::analyze(w, std::path::Path::new(".")).unwrap()
}

async fn engine(
    fake: &FakeServer,
    n: usize,
    concurrency: usize,
    journal_dir: Option<&std::path::Path>,
) -> Duration {
    let policy = Arc::new(policy_for(fake, concurrency));
    let analysis = Arc::new(workflow_of(n));
    let values = inputs::resolve(&analysis.workflow.value, &[], false).unwrap();
    let plan = plan::build(&analysis, &policy, "bench-policy.yaml", &values).unwrap();
    let providers = Providers::from_env(&policy);
    let journal = journal_dir.map(|dir| {
        let j = Arc::new(Journal::open(dir, Clock::System).unwrap());
        let run_id = j
            .begin_run(&NewRun {
                workflow: "bench".into(),
                workflow_path: "bench.yaml".into(),
                workflow_hash: String::new(),
                policy: "bench".into(),
                policy_path: "bench-policy.yaml".into(),
                policy_hash: String::new(),
                inputs_json: "{}".to_owned(),
                estimate_usd: 0.0,
                estimate_max_usd: 0.0,
                steps: Vec::new(),
            })
            .unwrap();
        RunJournal {
            journal: j,
            run_id,
            cache_ttl: Some(Duration::from_secs(3600)),
            durable_at_end: true,
            failed: Default::default(),
        }
    });
    let options = RunOptions {
        concurrency,
        stream: false,
        journal,
        ..RunOptions::default()
    };
    let job = Job {
        analysis,
        policy,
        plan: &plan,
        inputs: std::borrow::Cow::Borrowed(&values),
    };
    let started = Instant::now();
    let report = run::execute(job, providers, options, CancellationToken::new(), None).await;
    let elapsed = started.elapsed();
    assert_eq!(report.status, run::RunStatus::Succeeded);
    elapsed
}

async fn bare(fake: &FakeServer, n: usize) -> Duration {
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", fake.base_url());
    let started = Instant::now();
    for i in 0..n {
        let body = serde_json::json!({
            "model": "bench", "max_tokens": 16,
            "messages": [{ "role": "user", "content": format!("Say hello number {i}.") }]
        });
        let resp = client.post(&url).json(&body).send().await.unwrap();
        let v: serde_json::Value = resp.json().await.unwrap();
        assert!(v["choices"][0]["message"]["content"].is_string());
    }
    started.elapsed()
}

/// A run of one 1,000-item batch step on the fake's OpenAI Batch API.
async fn batch(fake: &FakeServer, n: usize) -> Duration {
    let policy = compile_policy(format!(
        "version: 1\nproviders:\n  openai: {{ kind: openai, base_url: \"{}/v1\" }}\nmodels:\n  m: {{ provider: openai, model: gpt-4o-mini, tier: budget }}\nrules:\n  - {{ name: all, use: m }}\n",
        fake.base_url()
    ));
    let y = format!(
        "version: 1\nname: bench\ninputs:\n  items: {{ type: array, default: {:?} }}\nsteps:\n  each: {{ task: classify, latency: batch, for_each: inputs.items, prompt: \"Label {{{{ item }}}}\", max_output_tokens: 4 }}\n",
        (0..n).collect::<Vec<_>>()
    );
    let doc = Document::parse(SourceFile::new("bench.yaml", y)).unwrap();
    let w: Loaded<Workflow> = workflow::from_document(doc, Format::Workflow).unwrap();
    let analysis = Arc::new(analyze::analyze(w, std::path::Path::new(".")).unwrap());
    let policy = Arc::new(policy);
    let values = inputs::resolve(&analysis.workflow.value, &[], false).unwrap();
    let plan = plan::build(&analysis, &policy, "bench-policy.yaml", &values).unwrap();
    let http = tollgate::provider::Http::without_proxy(Duration::from_secs(5));
    let config = || {
        tollgate::provider::ClientConfig::new(format!("{}/v1", fake.base_url())).with_api_key("k")
    };
    let kind = policy::ProviderKind::Openai;
    let providers = Providers::with_clients(
        [(
            "openai".to_owned(),
            tollgate::provider::client_for(kind, config(), http.clone()),
        )]
        .into(),
    )
    .with_batch_clients(
        [(
            "openai".to_owned(),
            tollgate::provider::batch::batch_client_for(kind, config(), http).unwrap(),
        )]
        .into(),
    );
    let options = RunOptions {
        stream: false,
        batch_poll_interval: Duration::from_millis(10),
        ..RunOptions::default()
    };
    let job = Job {
        analysis,
        policy,
        plan: &plan,
        inputs: std::borrow::Cow::Borrowed(&values),
    };
    let started = Instant::now();
    let report = run::execute(job, providers, options, CancellationToken::new(), None).await;
    let elapsed = started.elapsed();
    assert_eq!(report.status, run::RunStatus::Succeeded);
    let calls = &report.steps[0].calls;
    assert_eq!(calls.tally().batched, calls.len() as u64);
    elapsed
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    // `cargo test --benches` runs this too: keep that quick.
    let quick = std::env::args().any(|a| a == "--test" || a == "--list");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let fake = FakeServer::start().await;
        fake.set_default(Reply::text("hello").usage(12, 2));
        let n = if quick { 20 } else { 2_000 };
        let reps = if quick { 1 } else { 3 };
        let mut e = Vec::new();
        let mut b = Vec::new();
        let mut j = Vec::new();
        for _ in 0..reps {
            b.push(bare(&fake, n).await);
            e.push(engine(&fake, n, 1, None).await);
            let dir = tempfile::tempdir().unwrap();
            j.push(engine(&fake, n, 1, Some(dir.path())).await);
        }
        let (e, b, j) = (median(e), median(b), median(j));
        let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
        println!("(a) {n} sequential calls, zero latency: engine {:.0} µs/call, bare reqwest {:.0} µs/call, overhead {:.0} µs/call", per(e), per(b), per(e) - per(b));

        let slow = FakeServer::start().await;
        slow.set_default(Reply::text("hello").usage(12, 2).delay(Duration::from_millis(50)));
        let n = if quick { 32 } else { 1_000 };
        let mut w = Vec::new();
        for _ in 0..reps {
            w.push(engine(&slow, n, 16, None).await);
        }
        let w = median(w);
        let ideal = Duration::from_millis(50 * n.div_ceil(16) as u64);
        println!(
            "(b) {n} calls, 50 ms latency, concurrency 16: {:.2} s wall, ideal {:.2} s ({:.0}% of ideal)",
            w.as_secs_f64(),
            ideal.as_secs_f64(),
            ideal.as_secs_f64() / w.as_secs_f64() * 100.0
        );

        let batched = FakeServer::start().await;
        batched.set_default(Reply::text("bug").usage(12, 1));
        batched.set_batch_script(BatchScript {
            polls_before_done: 1,
            ..BatchScript::default()
        });
        let n = if quick { 20 } else { 1_000 };
        let mut t = Vec::new();
        for _ in 0..reps {
            t.push(batch(&batched, n).await);
        }
        let t = median(t);
        println!(
            "(c) one batch of {n} items (OpenAI Batch API fake, 2 polls 10 ms apart): {:.3} s wall, {:.0} µs/item",
            t.as_secs_f64(),
            t.as_secs_f64() * 1e6 / n as f64
        );
        // `per` still divides by (a)'s count: the journal runs were (a)'s.
        println!(
            "(d) the calls of (a) as one-call steps: with the journal {:.0} µs/step, without {:.0} µs/step, journal overhead {:.0} µs/step",
            per(j),
            per(e),
            per(j) - per(e)
        );
    });
}
