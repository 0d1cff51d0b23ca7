//! `cargo bench --bench suite`: `tollgate test` on big suites, live against
//! the loopback fake.
//!
//! Workload: a suite of N cases (1,000 and 10,000) loaded from a JSONL case
//! file; the workflow has one step (a classification of the case's ticket)
//! with `equals` and `contains` assertions; 16 calls in flight; the fake
//! answers at once or after 50 ms. Measured: wall time from loading the
//! suite to the rendered summary and JUnit XML, and peak resident memory.
//!
//! Each configuration runs in a fresh process (this binary re-executed with
//! `TOLLGATE_BENCH_CHILD`), so peak memory (`VmHWM`) is that run's alone.

use std::time::{Duration, Instant};

use fake_llm::{FakeServer, Reply};
use tokio_util::sync::CancellationToken;
use tollgate::eval::results::{self, Mode};
use tollgate::eval::runner::{self, TestOptions};
use tollgate::eval::suite;
use tollgate::run::RunOptions;

const CONFIGS: [(usize, u64); 4] = [(1_000, 0), (1_000, 50), (10_000, 0), (10_000, 50)];

fn main() {
    if let Ok(spec) = std::env::var("TOLLGATE_BENCH_CHILD") {
        let (n, ms) = spec.split_once(':').expect("N:MS");
        child(n.parse().unwrap(), ms.parse().unwrap());
        return;
    }
    // `cargo bench` passes `--bench`; a filter argument picks configurations.
    // `cargo test --benches` runs this too (without `--bench`): keep that
    // quick, at a hundredth of the cases.
    let quick = !std::env::args().any(|a| a == "--bench");
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    println!(
        "{:>8} {:>9} {:>11} {:>12} {:>10}",
        "cases", "latency", "wall", "cases/s", "peak RSS"
    );
    for (n, ms) in CONFIGS {
        let n = if quick { n / 100 } else { n };
        let name = format!("{n}:{ms}");
        if filter.as_ref().is_some_and(|f| !name.contains(f.as_str())) {
            continue;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .env("TOLLGATE_BENCH_CHILD", &name)
            .output()
            .expect("the bench child runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn child(n: usize, latency_ms: u64) {
    // The fake gets its own runtime and threads, like a server elsewhere.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let fake = FakeServer::start().await;
            let mut reply = Reply::text("bug").usage(24, 1);
            if latency_ms > 0 {
                reply = reply.delay(Duration::from_millis(latency_ms));
            }
            fake.set_default(reply);
            tx.send(fake.base_url()).unwrap();
            std::future::pending::<()>().await;
        });
    });
    let base = rx.recv().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir(p.join(".git")).unwrap();
    std::fs::write(
        p.join("policy.yaml"),
        format!(
            "version: 1\nproviders:\n  fake: {{ kind: openai-compatible, base_url: \"{base}/v1\", limits: {{ concurrency: 16 }} }}\nmodels:\n  m: {{ provider: fake, model: bench, tier: local, context_window: 100000 }}\nrules:\n  - {{ name: all, use: m }}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        p.join("wf.yaml"),
        "version: 1\nname: bench\ninputs:\n  ticket: { type: string }\nsteps:\n  classify:\n    task: classify\n    prompt: \"Label as bug or feature: {{ inputs.ticket }}\"\n    max_output_tokens: 5\n",
    )
    .unwrap();
    std::fs::write(
        p.join("suite.yaml"),
        "workflow: wf.yaml\npolicy: policy.yaml\ncases_from: cases.jsonl\n",
    )
    .unwrap();
    let mut jsonl = String::new();
    for i in 0..n {
        jsonl.push_str(&format!(
            "{{\"name\": \"case-{i}\", \"inputs\": {{\"ticket\": \"The app crashes when I open file number {i}.\"}}, \"expect\": {{\"classify\": {{\"equals\": \"bug\", \"contains\": \"bu\"}}}}}}\n"
        ));
    }
    std::fs::write(p.join("cases.jsonl"), jsonl).unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let s = suite::load(&p.join("suite.yaml")).unwrap_or_else(|d| panic!("{d:?}"));
    let opts = TestOptions {
        mode: Mode::Live,
        ci: true,
        repeat: 1,
        shard: None,
        filter: None,
        run: RunOptions {
            concurrency: 16,
            stream: false,
            ..RunOptions::default()
        },
        journal: None,
        on_run: None,
        measure: false,
    };
    let r = rt
        .block_on(runner::run_suites(
            std::slice::from_ref(&s),
            &opts,
            CancellationToken::new(),
        ))
        .unwrap_or_else(|d| panic!("{d:?}"));
    let text = results::render_text(&r).expect("the cases read back");
    let mut junit = Vec::new();
    results::write_junit(&r, &mut junit).expect("the cases read back");
    let wall = started.elapsed();
    let t = r.totals();
    assert_eq!(t.passed, n, "{text}");
    assert!(junit.len() > n * 50);
    println!(
        "{n:>8} {:>6} ms {:>9.2} s {:>12.0} {:>7.0} MB",
        latency_ms,
        wall.as_secs_f64(),
        n as f64 / wall.as_secs_f64(),
        peak_rss_mb()
    );
}
