//! `cargo bench --bench scale [-- [--quick] [--reps N] [FILTER…]]`: every row
//! of issue 12's table, as whole `tollgate` processes (the release binary
//! cargo builds for benches) against the project's loopback fake.
//!
//! Each measurement is one fresh process under GNU time (`/usr/bin/time`,
//! which reads the child's `wait4` rusage): wall time (taken here, around
//! spawn and reap), CPU time (user + system) and peak resident memory
//! (max RSS). A row prints the median of its repetitions (3 by default; a
//! run that hits the row's time limit is killed, reported as such, and not
//! repeated). Without GNU time, CPU and memory print as `-`.
//!
//! The fake (`crates/fake-llm`) runs in this process on its own one-thread
//! runtime, answering `bug` with usage 24/1 either at once (0 ms) or after
//! 50 ms. Workloads are written into a temporary project (a folder with
//! `.git`) on disk; the run journal (`--state`) is on disk too, except in
//! the `…-tmpfs` rows, which put it on `/dev/shm` (skipped when absent).
//! Every call is a free `tier: local` model, non-streamed (`--no-stream`).
//!
//! | row | workload |
//! |---|---|
//! | `run-fanout-50ms` | `run`: one `for_each` step over 1,000 items, 50 ms answers, `--concurrency 16`; ideal ⌈1000/16⌉ × 50 ms = 3.15 s; beside it the same calls from a bare reqwest client, 16 at a time, in-process: the floor the fake and the machine allow (the fake keeps its 50 ms to about 0.1 ms: `fake_llm`'s `wait_precisely`) |
//! | `run-seq-0ms` | `run`: `for_each` over 2,000 items, 0 ms, `--concurrency 1`; per-call overhead against a bare reqwest loop posting the same requests to the same fake, one at a time, measured here in-process |
//! | `run-seq-0ms-…-pg` | the same with the journal in PostgreSQL (`TOLLGATE_STATE_URL`, a fresh database per repetition on the server `$TOLLGATE_TEST_PG_URL` names; skipped without it): the shared ledger's per-call overhead beside the row above |
//! | `test-0ms-disk` / `-tmpfs` | `test`: 10,000 JSONL cases (one classification step, `equals` + `contains`), 0 ms, `--concurrency 16`, `--ci` |
//! | `test-50ms-disk` / `-tmpfs` | `test`: 1,000 such cases, 50 ms, `--concurrency 16`; ideal 3.15 s; and the bare reqwest floor, as above |
//! | `plan-small` | `plan workflows/ticket-triage.yaml -p policies/default.yaml` (3 steps, the example input) |
//! | `plan-steps` | `plan` of 10,000 generated steps (the `plan` criterion bench's workflow) with the team policy |
//! | `plan-foreach` | `plan` of one `for_each` step over 10⁴, 10⁵ and 10⁶ items (`--input items=@items.json`, a JSON array: 10⁶ is refused, above the 100,000 items a held list may have) |
//! | `plan-foreach-streamed` | the same over 10⁴ … 10⁷ items given as a streamed input (`stream: true`, `--input items=@items.jsonl`, one item per line) |
//! | `mem-test` / `mem-run` / `mem-run-streamed` | peak memory of `test` over 1k/10k/100k cases and of `run` over a `for_each` of 1k/10k/100k items, held or streamed (0 ms, concurrency 16) |
//!
//! `TOLLGATE_BENCH_BIN=PATH` measures another `tollgate` binary.
//! `-- --serve` starts only the fakes and prints their addresses (for
//! `benches/promptfoo.sh`, the same suite through promptfoo).
//!
//! `--reps N` sets the repetitions, `--limit SECS` the time limit (300 s;
//! 60 s when quick). A FILTER keeps the rows whose name contains it (`cargo bench --bench
//! scale -- plan`). `--quick` shrinks the big workloads (names show the
//! sizes used) and the time limit, to stay within a few minutes. Under
//! `cargo test --benches` (no `--bench` argument) every row runs once at a
//! tiny size: a check that the harness works, not a measurement.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fake_llm::{FakeServer, Reply};

/// The binary measured: cargo's build of this tree, or `$TOLLGATE_BENCH_BIN`
/// (to measure another build, e.g. a copy of the previous commit's).
fn tollgate() -> String {
    std::env::var("TOLLGATE_BENCH_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_tollgate").to_owned())
}
const GNU_TIME: &str = "/usr/bin/time";

/// How big the run is.
#[derive(Clone, Copy, PartialEq)]
enum Size {
    Full,
    Quick,
    /// `cargo test --benches`: every workload at a tiny size, once.
    Smoke,
}

impl Size {
    /// `full` in a full run, `quick` in a quick one, at most 20 in a smoke run.
    fn scale(self, full: usize, quick: usize) -> usize {
        match self {
            Size::Full => full,
            Size::Quick => quick,
            Size::Smoke => full.min(20),
        }
    }
}

struct Options {
    size: Size,
    reps: usize,
    /// `--limit SECS`: overrides [`Options::time_limit`]'s default.
    limit: Option<Duration>,
    filters: Vec<String>,
}

impl Options {
    fn parse() -> Options {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let size = if !args.iter().any(|a| a == "--bench") {
            Size::Smoke
        } else if args.iter().any(|a| a == "--quick") {
            Size::Quick
        } else {
            Size::Full
        };
        let value = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .and_then(|i| args.get(i + 1))
                .map(|n| {
                    n.parse::<u64>()
                        .unwrap_or_else(|_| panic!("{flag} takes a number"))
                })
        };
        let reps = value("--reps").map_or(if size == Size::Smoke { 1 } else { 3 }, |n| n as usize);
        let limit = value("--limit").map(Duration::from_secs);
        let mut filters = Vec::new();
        let mut skip_next = false;
        for a in &args {
            if std::mem::take(&mut skip_next) {
                continue;
            }
            if a == "--reps" || a == "--limit" {
                skip_next = true;
            } else if !a.starts_with("--") {
                filters.push(a.clone());
            }
        }
        Options {
            size,
            reps,
            limit,
            filters,
        }
    }

    fn wants(&self, row: &str) -> bool {
        self.filters.is_empty() || self.filters.iter().any(|f| row.contains(f.as_str()))
    }

    /// A run longer than this is killed: today's quadratic fan-out would
    /// otherwise keep a 100k-item row busy for hours.
    fn time_limit(&self) -> Duration {
        if let Some(limit) = self.limit {
            return limit;
        }
        match self.size {
            Size::Full => Duration::from_secs(300),
            Size::Quick => Duration::from_secs(60),
            Size::Smoke => Duration::from_secs(120),
        }
    }
}

/// One process, measured.
#[derive(Debug, Clone)]
struct Sample {
    wall: Duration,
    cpu: Option<Duration>,
    max_rss_kb: Option<u64>,
    outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Ok,
    /// A non-zero exit: the last line of its stderr.
    Failed(String),
    /// Killed at the time limit.
    TimedOut,
}

/// Runs `tollgate args…` in `cwd` and measures it (see the file comment).
fn measure(
    cwd: &Path,
    args: &[String],
    env: &[(&str, &str)],
    limit: Duration,
    scratch: &Path,
) -> Sample {
    let stats = scratch.join("time.out");
    let stderr = scratch.join("stderr.txt");
    let _ = std::fs::remove_file(&stats);
    let timed = gnu_time_works();
    let mut cmd = if timed {
        let mut c = Command::new(GNU_TIME);
        c.args(["-f", "%U %S %M", "-o"]).arg(&stats).arg(tollgate());
        c
    } else {
        Command::new(tollgate())
    };
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("TOLLGATE_POLICY")
        .env_remove("TOLLGATE_STATE")
        .env_remove("TOLLGATE_STATE_URL")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).expect("scratch is writable"));
    // Its own process group, so a timeout kills `time` and tollgate together.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let started = Instant::now();
    let mut child = cmd.spawn().expect("tollgate starts");
    let pid = child.id();
    // Reaped on a thread so the wall time is taken the moment it ends,
    // while this thread watches the clock.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let status = child.wait();
        let _ = tx.send((status, started.elapsed()));
    });
    let (status, wall, timed_out, hwm) = match rx.recv_timeout(limit) {
        Ok((status, wall)) => (status.expect("wait"), wall, false, None),
        Err(_) => {
            // Peak memory so far, read before the kill (a zombie has none).
            let hwm = tollgate_pid(pid, timed).and_then(vm_hwm_kb);
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
            let (status, wall) = rx.recv().expect("the waiter reports");
            (status.expect("wait"), wall, true, hwm)
        }
    };
    let (cpu, rss) = if timed && !timed_out {
        parse_gnu_time(&std::fs::read_to_string(&stats).unwrap_or_default())
    } else {
        (None, hwm)
    };
    let outcome = if timed_out {
        Outcome::TimedOut
    } else if status.success() {
        Outcome::Ok
    } else {
        let text = std::fs::read_to_string(&stderr).unwrap_or_default();
        let last = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty() && !l.starts_with("Command exited"))
            .unwrap_or("")
            .trim();
        Outcome::Failed(format!(
            "{status}: {}",
            last.chars().take(100).collect::<String>()
        ))
    };
    Sample {
        wall,
        cpu,
        max_rss_kb: rss,
        outcome,
    }
}

/// Whether `/usr/bin/time` is GNU time (it takes `-f`/`-o`).
fn gnu_time_works() -> bool {
    static WORKS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WORKS.get_or_init(|| {
        Command::new(GNU_TIME)
            .args(["-f", "%M", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .is_ok_and(|o| {
                o.status.success()
                    && String::from_utf8_lossy(&o.stderr)
                        .trim()
                        .parse::<u64>()
                        .is_ok()
            })
    })
}

/// `%U %S %M`: CPU seconds (user, system) and max RSS in KiB.
fn parse_gnu_time(text: &str) -> (Option<Duration>, Option<u64>) {
    let Some(line) = text.lines().rev().find(|l| !l.starts_with("Command")) else {
        return (None, None);
    };
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() != 3 {
        return (None, None);
    }
    let user = f[0].parse::<f64>().ok();
    let sys = f[1].parse::<f64>().ok();
    let cpu = user.zip(sys).map(|(u, s)| Duration::from_secs_f64(u + s));
    (cpu, f[2].parse().ok())
}

/// The tollgate process: the spawned one, or GNU time's only child.
fn tollgate_pid(spawned: u32, under_time: bool) -> Option<u32> {
    if !under_time {
        return Some(spawned);
    }
    let children =
        std::fs::read_to_string(format!("/proc/{spawned}/task/{spawned}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The two fakes, on a runtime of their own (like a server elsewhere).
struct Fakes {
    instant: String,
    slow: String,
}

fn start_fakes() -> Fakes {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async move {
            let instant = FakeServer::start().await;
            instant.set_default(Reply::text("bug").usage(24, 1));
            let slow = FakeServer::start().await;
            slow.set_default(
                Reply::text("bug")
                    .usage(24, 1)
                    .delay(Duration::from_millis(50)),
            );
            tx.send((instant.base_url(), slow.base_url()))
                .expect("main waits");
            std::future::pending::<()>().await;
        });
    });
    let (instant, slow) = rx.recv().expect("the fakes start");
    Fakes { instant, slow }
}

/// The fan-out's `i`-th request, posted by a bare reqwest client, and its
/// answer checked.
async fn bare_call(client: &reqwest::Client, url: &str, i: usize) {
    let body = serde_json::json!({
        "model": "bench", "max_tokens": 5, "stream": false,
        "messages": [{ "role": "user", "content": format!("Label as bug or feature: ticket {i}") }]
    });
    let resp = client.post(url).json(&body).send().await.expect("sent");
    let v: serde_json::Value = resp.json().await.expect("JSON");
    assert_eq!(v["choices"][0]["message"]["content"], "bug");
}

/// Posts `n` requests like the fan-out's, one at a time, with one reqwest
/// client: the floor the engine's per-call overhead is measured against.
fn bare_loop(base: &str, n: usize) -> Duration {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let client = reqwest::Client::new();
        let url = format!("{base}/v1/chat/completions");
        let started = Instant::now();
        for i in 0..n {
            bare_call(&client, &url, i).await;
        }
        started.elapsed()
    })
}

/// Posts `n` requests like the fan-out's, `concurrency` at a time (a new
/// one as soon as one is answered, as the engine's window does), with one
/// reqwest client: the floor of the concurrent rows. Against the 50 ms fake
/// it shows what the fake and the machine add to the ideal (HTTP on two
/// cores, the fake's delay overshooting by up to ~0.1 ms), which no client
/// can win back.
fn bare_concurrent(base: &str, n: usize, concurrency: usize) -> Duration {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let client = reqwest::Client::new();
        let url = format!("{base}/v1/chat/completions");
        let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let started = Instant::now();
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                let (client, url, next) = (client.clone(), url.clone(), next.clone());
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        bare_call(&client, &url, i).await;
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.expect("a worker");
        }
        started.elapsed()
    })
}

/// The temporary project every workload lives in.
struct Project {
    root: tempfile::TempDir,
    fakes: Fakes,
    repo: PathBuf,
}

impl Project {
    fn new(fakes: Fakes) -> Project {
        let root = tempfile::tempdir().expect("a temp dir");
        std::fs::create_dir(root.path().join(".git")).expect("writable");
        // A local provider defaults to one slot (what a llama.cpp server
        // serves by default); the fake serves many, so the policy says so —
        // the rows measure tollgate, not the slot limit.
        for (name, base) in [("instant", &fakes.instant), ("slow", &fakes.slow)] {
            write(
                &root.path().join(format!("policy-{name}.yaml")),
                &format!(
                    "version: 1\nproviders:\n  fake: {{ kind: openai-compatible, base_url: \"{base}/v1\", limits: {{ concurrency: 64 }} }}\nmodels:\n  m: {{ provider: fake, model: bench, tier: local, context_window: 100000 }}\nrules:\n  - {{ name: all, use: m }}\n"
                ),
            );
        }
        write(
            &root.path().join("fanout.yaml"),
            "version: 1\nname: fanout\ninputs:\n  items: { type: array }\nsteps:\n  label:\n    task: classify\n    for_each: inputs.items\n    prompt: \"Label as bug or feature: {{ item }}\"\n    max_output_tokens: 5\n",
        );
        write(
            &root.path().join("fanout-streamed.yaml"),
            "version: 1\nname: fanout\ninputs:\n  items: { type: array, stream: true }\nsteps:\n  label:\n    task: classify\n    for_each: inputs.items\n    prompt: \"Label as bug or feature: {{ item }}\"\n    max_output_tokens: 5\n",
        );
        write(
            &root.path().join("case.yaml"),
            "version: 1\nname: case\ninputs:\n  ticket: { type: string }\nsteps:\n  classify:\n    task: classify\n    prompt: \"Label as bug or feature: {{ inputs.ticket }}\"\n    max_output_tokens: 5\n",
        );
        Project {
            root,
            fakes,
            repo: PathBuf::from(env!("CARGO_MANIFEST_DIR")),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    fn policy(&self, slow: bool) -> String {
        let name = if slow { "slow" } else { "instant" };
        self.path(&format!("policy-{name}.yaml"))
            .display()
            .to_string()
    }

    /// `items-N.json`: N short ticket strings, as a JSON array, or
    /// streamed: `items-N.jsonl`, one per line.
    fn items(&self, n: usize, streamed: bool) -> String {
        let ext = if streamed { "jsonl" } else { "json" };
        let path = self.path(&format!("items-{n}.{ext}"));
        if !path.exists() {
            let items = (0..n).map(|i| format!("\"ticket {i}\""));
            let text = if streamed {
                items.map(|i| i + "\n").collect::<String>()
            } else {
                format!("[{}]", items.collect::<Vec<_>>().join(","))
            };
            write(&path, &text);
        }
        path.display().to_string()
    }

    /// The fan-out workflow, over a JSON array input or a streamed one.
    fn fanout(&self, streamed: bool) -> String {
        let name = if streamed {
            "fanout-streamed.yaml"
        } else {
            "fanout.yaml"
        };
        self.path(name).display().to_string()
    }

    /// `suite-N-slow.yaml` and its N-case JSONL file.
    fn suite(&self, n: usize, slow: bool) -> String {
        let cases = format!("cases-{n}.jsonl");
        if !self.path(&cases).exists() {
            let mut jsonl = String::new();
            for i in 0..n {
                let _ = writeln!(
                    jsonl,
                    "{{\"name\": \"case-{i}\", \"inputs\": {{\"ticket\": \"The app crashes when I open file number {i}.\"}}, \"expect\": {{\"classify\": {{\"equals\": \"bug\", \"contains\": \"bu\"}}}}}}"
                );
            }
            write(&self.path(&cases), &jsonl);
        }
        let suite = self.path(&format!("suite-{n}-{slow}.yaml"));
        write(
            &suite,
            &format!(
                "workflow: case.yaml\npolicy: {}\ncases_from: {cases}\n",
                self.policy(slow)
            ),
        );
        suite.display().to_string()
    }

    /// `steps-N.yaml`: the `plan` criterion bench's generated workflow.
    fn many_steps(&self, n: usize) -> String {
        let path = self.path(&format!("steps-{n}.yaml"));
        let mut y = String::from(
            "version: 1\nname: generated\ninputs:\n  text: { type: string, sensitivity: internal, default: \"The service returned 502 for 8% of requests after the deploy.\" }\n  logs: { type: string, sensitivity: confidential, default: \"09:12 OOM killed export-worker\" }\nsteps:\n",
        );
        for i in 0..n {
            let (task, reasoning) = if i % 10 == 0 {
                ("debug", "deep")
            } else {
                ("summarize", "standard")
            };
            let input = if i % 5 == 0 { "logs" } else { "text" };
            let _ = write!(
                y,
                "  s{i}:\n    task: {task}\n    reasoning: {reasoning}\n    max_output_tokens: 200\n    prompt: |\n      Step {i}. Look at this: {{{{ inputs.{input} }}}}\n"
            );
            if i > 0 {
                let _ = writeln!(
                    y,
                    "      Previous finding: {{{{ steps.s{}.output }}}}",
                    i - 1
                );
            }
        }
        write(&path, &y);
        path.display().to_string()
    }

    /// A fresh journal folder, on disk or on tmpfs.
    fn state(&self, tmpfs: bool) -> Option<tempfile::TempDir> {
        if tmpfs {
            let shm = Path::new("/dev/shm");
            shm.is_dir()
                .then(|| tempfile::tempdir_in(shm).ok())
                .flatten()
        } else {
            tempfile::tempdir_in(self.root.path()).ok()
        }
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// What a row runs.
#[derive(Clone, Copy)]
enum Work {
    Run {
        items: usize,
        slow: bool,
        concurrency: usize,
        /// The items as a streamed JSON Lines input, not a JSON array.
        streamed: bool,
    },
    Test {
        cases: usize,
        slow: bool,
        tmpfs: bool,
    },
    PlanSmall,
    PlanSteps(usize),
    /// Items, and whether they are a streamed JSON Lines input.
    PlanForEach(usize, bool),
}

impl Work {
    /// The command line (without the binary), and the journal folder it uses.
    fn args(self, p: &Project) -> Option<(Vec<String>, Option<tempfile::TempDir>)> {
        let tmpfs = matches!(self, Work::Test { tmpfs: true, .. });
        let state = p.state(tmpfs)?;
        let mut args: Vec<String> = match self {
            Work::Run {
                items,
                slow,
                concurrency,
                streamed,
            } => vec![
                "run".into(),
                p.fanout(streamed),
                "-p".into(),
                p.policy(slow),
                "--input".into(),
                format!("items=@{}", p.items(items, streamed)),
                "--concurrency".into(),
                concurrency.to_string(),
                "--no-stream".into(),
                "-q".into(),
            ],
            Work::Test { cases, slow, .. } => vec![
                "test".into(),
                p.suite(cases, slow),
                "--ci".into(),
                "--concurrency".into(),
                "16".into(),
                "-q".into(),
            ],
            Work::PlanSmall => vec![
                "plan".into(),
                "workflows/ticket-triage.yaml".into(),
                "-p".into(),
                "policies/default.yaml".into(),
            ],
            Work::PlanSteps(n) => vec![
                "plan".into(),
                p.many_steps(n),
                "-p".into(),
                p.repo.join("policies/default.yaml").display().to_string(),
            ],
            Work::PlanForEach(n, streamed) => vec![
                "plan".into(),
                p.fanout(streamed),
                "-p".into(),
                p.policy(false),
                "--input".into(),
                format!("items=@{}", p.items(n, streamed)),
            ],
        };
        args.push("--state".into());
        args.push(state.path().display().to_string());
        Some((args, Some(state)))
    }

    /// Where it runs: the repository for its own example, else the project.
    fn cwd(self, p: &Project) -> PathBuf {
        match self {
            Work::PlanSmall => p.repo.clone(),
            _ => p.root.path().to_path_buf(),
        }
    }

    /// The wall time of a perfect engine: the fake's latency only.
    fn ideal(self) -> Option<Duration> {
        match self {
            Work::Run {
                items,
                slow: true,
                concurrency,
                ..
            } => Some(Duration::from_millis(
                50 * items.div_ceil(concurrency) as u64,
            )),
            Work::Test {
                cases, slow: true, ..
            } => Some(Duration::from_millis(50 * cases.div_ceil(16) as u64)),
            _ => None,
        }
    }
}

struct Row {
    name: String,
    work: Work,
    /// Per-call overhead against the bare loop (the sequential fan-out).
    versus_bare: bool,
    /// The journal in a fresh PostgreSQL database per repetition.
    pg: bool,
}

fn rows(size: Size) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut add = |name: String, work: Work| {
        rows.push(Row {
            versus_bare: matches!(work, Work::Run { concurrency: 1, .. }),
            pg: name.ends_with("-pg"),
            name,
            work,
        })
    };
    let n = size.scale(1_000, 200);
    add(
        format!("run-fanout-50ms-c16-{n}"),
        Work::Run {
            items: n,
            slow: true,
            concurrency: 16,
            streamed: false,
        },
    );
    let n = size.scale(2_000, 300);
    for pg in ["", "-pg"] {
        add(
            format!("run-seq-0ms-c1-{n}{pg}"),
            Work::Run {
                items: n,
                slow: false,
                concurrency: 1,
                streamed: false,
            },
        );
    }
    for (slow, full, quick) in [(false, 10_000, 1_000), (true, 1_000, 200)] {
        let n = size.scale(full, quick);
        for tmpfs in [false, true] {
            let ms = if slow { 50 } else { 0 };
            let disk = if tmpfs { "tmpfs" } else { "disk" };
            add(
                format!("test-{ms}ms-{disk}-{n}"),
                Work::Test {
                    cases: n,
                    slow,
                    tmpfs,
                },
            );
        }
    }
    add("plan-small".into(), Work::PlanSmall);
    let n = size.scale(10_000, 10_000);
    add(format!("plan-steps-{n}"), Work::PlanSteps(n));
    let sizes: &[usize] = match size {
        Size::Full => &[10_000, 100_000, 1_000_000],
        Size::Quick => &[10_000, 100_000],
        Size::Smoke => &[20],
    };
    for &n in sizes {
        add(format!("plan-foreach-{n}"), Work::PlanForEach(n, false));
    }
    // The same list streamed from a JSON Lines file, up to 10⁷ items.
    let sizes: &[usize] = match size {
        Size::Full => &[10_000, 100_000, 1_000_000, 10_000_000],
        Size::Quick => &[10_000, 100_000, 1_000_000],
        Size::Smoke => &[20],
    };
    for &n in sizes {
        add(
            format!("plan-foreach-streamed-{n}"),
            Work::PlanForEach(n, true),
        );
    }
    let sizes: &[usize] = match size {
        Size::Full => &[1_000, 10_000, 100_000],
        Size::Quick => &[1_000, 10_000],
        Size::Smoke => &[20],
    };
    for &n in sizes {
        add(
            format!("mem-test-{n}"),
            Work::Test {
                cases: n,
                slow: false,
                tmpfs: false,
            },
        );
    }
    for streamed in [false, true] {
        let kind = if streamed { "-streamed" } else { "" };
        for &n in sizes {
            add(
                format!("mem-run{kind}-{n}"),
                Work::Run {
                    items: n,
                    slow: false,
                    concurrency: 16,
                    streamed,
                },
            );
        }
    }
    rows
}

fn main() {
    // `-- --serve`: only the fakes, for a peer measured against the same
    // server (benches/promptfoo.sh).
    if std::env::args().any(|a| a == "--serve") {
        let fakes = start_fakes();
        println!("instant {}\nslow {}", fakes.instant, fakes.slow);
        loop {
            std::thread::park();
        }
    }
    let opts = Options::parse();
    let rows: Vec<Row> = rows(opts.size)
        .into_iter()
        .filter(|r| opts.wants(&r.name))
        .collect();
    let project = Project::new(start_fakes());
    let scratch = tempfile::tempdir().expect("a temp dir");
    if !gnu_time_works() {
        println!("(no GNU time at {GNU_TIME}: CPU and peak RSS are not measured)");
    }
    println!(
        "{:<26} {:>22} {:>8} {:>9}  note",
        "row", "wall median (min–max)", "CPU", "peak RSS"
    );
    for row in &rows {
        let Some(samples) = run_row(row, &project, &opts, scratch.path()) else {
            let why = if row.pg {
                "no PostgreSQL: set TOLLGATE_TEST_PG_URL"
            } else {
                "no tmpfs at /dev/shm"
            };
            println!("{:<26} skipped ({why})", row.name);
            continue;
        };
        let mut note = String::new();
        if let Some(ideal) = row.work.ideal() {
            let wall = median(samples.iter().map(|s| s.wall));
            let _ = write!(
                note,
                "ideal {:.2} s ({:.2}× ideal)",
                ideal.as_secs_f64(),
                wall.as_secs_f64() / ideal.as_secs_f64()
            );
        }
        // The same calls, bare: what the fake allows (see `bare_concurrent`).
        let floor = match row.work {
            Work::Run {
                items,
                slow: true,
                concurrency,
                ..
            } => Some((items, concurrency)),
            Work::Test {
                cases, slow: true, ..
            } => Some((cases, 16)),
            _ => None,
        };
        if let Some((calls, concurrency)) = floor {
            let bare = median(
                (0..opts.reps).map(|_| bare_concurrent(&project.fakes.slow, calls, concurrency)),
            );
            let _ = write!(
                note,
                "; bare reqwest {:.2} s ({:.2}× ideal)",
                bare.as_secs_f64(),
                bare.as_secs_f64() / row.work.ideal().map_or(1.0, |i| i.as_secs_f64())
            );
        }
        if let (true, Work::Run { items, .. }) = (row.versus_bare, row.work) {
            let bare = median((0..opts.reps).map(|_| bare_loop(&project.fakes.instant, items)));
            let wall = median(samples.iter().map(|s| s.wall));
            let per = |d: Duration| d.as_secs_f64() * 1e3 / items as f64;
            let _ = write!(
                note,
                "{:.3} ms/call; bare reqwest {:.3} ms/call; overhead {:.3} ms/call",
                per(wall),
                per(bare),
                per(wall) - per(bare)
            );
        }
        print_row(&row.name, &samples, &note);
    }
}

/// The row's samples (`None` when it cannot run here).
fn run_row(row: &Row, p: &Project, opts: &Options, scratch: &Path) -> Option<Vec<Sample>> {
    let mut samples = Vec::new();
    for _ in 0..opts.reps {
        // A fresh journal each time: a second run must not be answered
        // from the first one's cache.
        let (args, _state) = row.work.args(p)?;
        let db = if row.pg { Some(PgDb::create()?) } else { None };
        let env: Vec<(&str, &str)> = db
            .iter()
            .map(|d| ("TOLLGATE_STATE_URL", d.url.as_str()))
            .collect();
        let s = measure(&row.work.cwd(p), &args, &env, opts.time_limit(), scratch);
        let stop = s.outcome != Outcome::Ok;
        samples.push(s);
        if stop {
            break;
        }
    }
    Some(samples)
}

/// A database made for one repetition of a `-pg` row and dropped after it.
struct PgDb {
    admin: String,
    name: String,
    url: String,
}

impl PgDb {
    /// `None` (the row is skipped) without `$TOLLGATE_TEST_PG_URL`.
    fn create() -> Option<PgDb> {
        let admin = std::env::var("TOLLGATE_TEST_PG_URL")
            .ok()
            .filter(|u| !u.is_empty())?;
        let name = format!("tollgate_bench_{:016x}", fastrand::u64(..));
        let mut c = postgres::Client::connect(&admin, postgres::NoTls).ok()?;
        c.batch_execute(&format!("CREATE DATABASE {name}")).ok()?;
        let mut url = url::Url::parse(&admin).ok()?;
        url.set_path(&format!("/{name}"));
        Some(PgDb {
            admin,
            name,
            url: url.to_string(),
        })
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        if let Ok(mut c) = postgres::Client::connect(&self.admin, postgres::NoTls) {
            let _ = c.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

fn median(it: impl Iterator<Item = Duration>) -> Duration {
    let mut v: Vec<Duration> = it.collect();
    v.sort();
    v[v.len() / 2]
}

fn print_row(name: &str, samples: &[Sample], note: &str) {
    let last = samples.last().expect("at least one sample");
    let secs = |d: Duration| {
        if d < Duration::from_secs(1) {
            format!("{:.0} ms", d.as_secs_f64() * 1e3)
        } else {
            format!("{:.2} s", d.as_secs_f64())
        }
    };
    let walls: Vec<Duration> = samples.iter().map(|s| s.wall).collect();
    let wall = median(walls.iter().copied());
    let min = walls.iter().min().copied().unwrap_or(wall);
    let max = walls.iter().max().copied().unwrap_or(wall);
    let wall_text = if samples.len() > 1 {
        format!("{} ({}–{})", secs(wall), secs(min), secs(max))
    } else {
        secs(wall)
    };
    let cpus: Vec<Duration> = samples.iter().filter_map(|s| s.cpu).collect();
    let cpu = if cpus.is_empty() {
        "-".to_owned()
    } else {
        secs(median(cpus.into_iter()))
    };
    let mut rss: Vec<u64> = samples.iter().filter_map(|s| s.max_rss_kb).collect();
    rss.sort_unstable();
    let rss = rss.get(rss.len() / 2).map_or("-".to_owned(), |kb| {
        format!("{:.0} MB", *kb as f64 / 1024.0)
    });
    let note = match &last.outcome {
        Outcome::Ok => note.to_owned(),
        Outcome::Failed(why) => format!("FAILED {why}"),
        Outcome::TimedOut => "TIMED OUT (killed at the limit; RSS so far)".to_owned(),
    };
    println!("{name:<26} {wall_text:>22} {cpu:>8} {rss:>9}  {note}");
}
