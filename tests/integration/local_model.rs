//! A real local model: llama.cpp's llama-server with Gemma 3 270M, started
//! and stopped by tollgate itself (`launch` in the policy). The model and
//! server are installed by `scripts/setup-local.sh` (CI runs it first); on a
//! machine without them these tests say so and pass, except under CI, where
//! a missing model is a failure.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};

use crate::support::{Cmd, Project, step, transcript};

fn installed() -> Option<(PathBuf, PathBuf)> {
    let cache = std::env::var_os("TOLLGATE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/tollgate")
        });
    let server = std::env::var_os("LLAMA_SERVER")
        .map_or_else(|| cache.join("bin/llama-server"), PathBuf::from);
    let model = std::env::var_os("TOLLGATE_MODEL").map_or_else(
        || cache.join("models/gemma-3-270m-q4_k_m.gguf"),
        PathBuf::from,
    );
    if server.is_file() && model.is_file() {
        return Some((server, model));
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run scripts/setup-local.sh before the tests (no {} or {})",
        server.display(),
        model.display()
    );
    eprintln!("skipped: no local model installed (run scripts/setup-local.sh)");
    None
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn launch_policy(binary: &str, model: &str, port: u16) -> String {
    format!(
        r#"version: 1
providers:
  llamacpp:
    kind: openai-compatible
    base_url: "http://127.0.0.1:{port}/v1"
    launch:
      binary: "{binary}"
      model: "{model}"
      context: 2048
      threads: 2
      ready_timeout: 60s
      args: ["--alias", "gemma-3-270m"]
models:
  local: {{ provider: llamacpp, model: gemma-3-270m, tier: local, context_window: 2048 }}
rules:
  - {{ name: all, use: local }}
"#
    )
}

const CLASSIFY: &str = r#"version: 1
name: real-classify
inputs:
  ticket: { type: string }
steps:
  label:
    task: classify
    prompt: "Classify this ticket as bug, feature or question: {{ inputs.ticket }}"
    max_output_tokens: 32
    temperature: 0
    timeout: 5m
    output:
      schema: { type: object, required: [label], properties: { label: { enum: [bug, feature, question] } } }
"#;

fn run_in(dir: &std::path::Path, args: &[&str]) -> Output {
    let mut all = vec!["run", "wf.yaml", "--policy", "policy.yaml"];
    all.extend_from_slice(args);
    Cmd::new(dir, &all).output()
}

/// `GET /health` answered `{"status":"ok"}` (the server has loaded its model).
fn health_ok(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"ok\"")
}

fn answers(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[test]
fn tollgate_starts_the_server_gets_a_constrained_answer_and_stops_it() {
    let Some((server, model)) = installed() else {
        return;
    };
    let port = free_port();
    let dir = Project::new(
        &launch_policy(
            &server.display().to_string(),
            &model.display().to_string(),
            port,
        ),
        CLASSIFY,
    );
    let out = run_in(
        dir.path(),
        &[
            "--input",
            "ticket=Saving a 2 GB file freezes the editor.",
            "--format",
            "json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let step = &r["steps"][0];
    // Schema-constrained decoding on the real server: always a valid label;
    // at temperature 0 this ticket is a bug.
    assert_eq!(
        step["output"],
        serde_json::json!({ "label": "bug" }),
        "{step}"
    );
    assert!(step["usage"]["input_tokens"].as_u64().unwrap() > 10);
    assert_eq!(step["cost_usd"].as_f64(), Some(0.0));
    // The server's log is kept, and the server is gone.
    assert!(dir.path().join(".tollgate/logs/llamacpp.log").is_file());
    assert!(
        !answers(port),
        "the server tollgate started is still running"
    );
}

#[test]
fn a_server_that_is_already_running_is_used_and_left_running() {
    let Some((server, model)) = installed() else {
        return;
    };
    let port = free_port();
    let mut running = Command::new(&server)
        .args([
            "-m",
            &model.display().to_string(),
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .args(["-c", "2048", "-t", "2", "--alias", "gemma-3-270m"])
        .env("OMP_WAIT_POLICY", "passive")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait for it, as a user's own server would already be.
    let client = std::time::Instant::now();
    while client.elapsed() < std::time::Duration::from_secs(60) {
        let ok = health_ok(port);
        if ok {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let dir = Project::new(
        &launch_policy("/nonexistent/llama-server", "/nonexistent/model.gguf", port),
        CLASSIFY,
    );
    let out = run_in(
        dir.path(),
        &[
            "--input",
            "ticket=Please add a dark mode.",
            "--format",
            "json",
        ],
    );
    let alive = answers(port);
    let _ = running.kill();
    let _ = running.wait();
    // The launch settings point nowhere: only the running server can have answered.
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    assert!(alive, "tollgate stopped a server it did not start");
}

#[test]
fn a_missing_model_file_is_a_clear_error() {
    let port = free_port();
    let dir = Project::new(
        &launch_policy("/bin/true", "/nonexistent/model.gguf", port),
        CLASSIFY,
    );
    let out = run_in(dir.path(), &["--input", "ticket=x", "--format", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let detail = r["steps"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("model file `/nonexistent/model.gguf` does not exist"),
        "{detail}"
    );
    assert!(detail.contains("scripts/setup-local.sh"), "{detail}");
}

#[test]
fn a_server_that_dies_at_start_shows_its_last_log_lines() {
    let port = free_port();
    let dir = Project::new("", CLASSIFY);
    // A stand-in server that complains and exits, as llama-server does on a
    // corrupt model.
    let fake = dir.path().join("fake-server.sh");
    std::fs::write(&fake, "#!/bin/sh\necho 'llama_model_load: error loading model: tensor data is not within the file bounds' >&2\nexit 1\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let model = dir.path().join("model.gguf");
    std::fs::write(&model, "not really a model").unwrap();
    std::fs::write(
        dir.path().join("policy.yaml"),
        launch_policy(
            &fake.display().to_string(),
            &model.display().to_string(),
            port,
        ),
    )
    .unwrap();
    let out = run_in(dir.path(), &["--input", "ticket=x", "--format", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let detail = r["steps"][0]["detail"].as_str().unwrap();
    assert!(detail.contains("exited"), "{detail}");
    assert!(
        detail.contains("tensor data is not within the file bounds"),
        "{detail}"
    );
}

#[test]
fn a_base_model_labels_a_batch_with_a_few_shot_prompt_on_the_completions_endpoint() {
    let Some((server, model)) = installed() else {
        return;
    };
    let port = free_port();
    let policy = launch_policy(
        &server.display().to_string(),
        &model.display().to_string(),
        port,
    )
    .replace(
        "context_window: 2048 }",
        "context_window: 2048, endpoint: completions }",
    );
    let workflow =
        std::fs::read_to_string(crate::support::root().join("workflows/few-shot-labels.yaml"))
            .unwrap();
    let dir = Project::new(&policy, &workflow);
    let tickets = r#"tickets=["Saving a 2 GB file freezes the editor.", "It would be great to sync bookmarks across devices."]"#;
    let out = run_in(dir.path(), &["--input", tickets, "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let labels: Vec<String> = r["steps"][0]["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().trim().to_owned())
        .collect();
    // The stop sequence ends each answer at the label; temperature 0 makes it
    // repeatable.
    assert_eq!(labels, vec!["bug", "feature"]);
}

/// A run killed outright cannot stop its server; the next run in the project
/// finds it (the pid file, its owner gone), uses it, and stops it at its end.
#[test]
fn a_server_left_by_a_killed_run_is_adopted_and_stopped_by_the_next() {
    let Some((server, model)) = installed() else {
        return;
    };
    let port = free_port();
    let dir = Project::new(
        &launch_policy(
            &server.display().to_string(),
            &model.display().to_string(),
            port,
        ),
        CLASSIFY,
    );
    // A long answer, so the run is still going when it is killed.
    std::fs::write(
        dir.path().join("story.yaml"),
        "version: 1\nname: story\nsteps:\n  tell:\n    task: write\n    prompt: \"Write a very long story about a lighthouse.\"\n    max_output_tokens: 1500\n",
    )
    .unwrap();
    let mut first = dir
        .tollgate(&["run", "story.yaml", "--policy", "policy.yaml", "-q"])
        .into_std()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Up, and written down by the run that started it.
    let pid_file = dir.path().join(".tollgate/logs/llamacpp.pid");
    let waited = std::time::Instant::now();
    while !(health_ok(port) && pid_file.is_file()) {
        assert!(
            waited.elapsed() < std::time::Duration::from_secs(90),
            "the server never came up"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    // The server may be busy for a moment cancelling the dropped request.
    let waited = std::time::Instant::now();
    while !health_ok(port) && waited.elapsed() < std::time::Duration::from_secs(30) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        health_ok(port),
        "the killed run's server should still be up (answers: {})",
        answers(port)
    );

    let out = run_in(dir.path(), &["--input", "ticket=The app crashes on save."]);
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("adopted, it stops with this run"),
        "{stderr}"
    );
    assert!(!answers(port), "the adopted server is still running");
    assert!(!pid_file.exists());
}

/// A llama-server of the installed model on its own port, its log in `log`;
/// killed when dropped.
struct RealServer {
    child: std::process::Child,
    port: u16,
    log: PathBuf,
}

impl RealServer {
    fn start(
        server: &std::path::Path,
        model: &std::path::Path,
        dir: &std::path::Path,
    ) -> RealServer {
        let port = free_port();
        let log = dir.join(format!("server-{port}.log"));
        let child = Command::new(server)
            .args(["-m", &model.display().to_string()])
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["-c", "2048", "-t", "1", "--alias", "gemma-3-270m"])
            .env("OMP_WAIT_POLICY", "passive")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        RealServer { child, port, log }
    }

    fn wait_healthy(&self) {
        let start = std::time::Instant::now();
        while !health_ok(self.port) {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(120),
                "llama-server on {} did not load its model",
                self.port
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// Requests the server has finished (llama-server logs a slot's release).
    fn finished(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .matches("stop processing")
            .count()
    }
}

impl Drop for RealServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_pool_of_two_real_servers_loses_no_item_when_one_is_killed_mid_run() {
    let Some((server, model)) = installed() else {
        return;
    };
    let dir = Project::empty();
    let a = RealServer::start(&server, &model, dir.path());
    let mut b = RealServer::start(&server, &model, dir.path());
    a.wait_healthy();
    b.wait_healthy();
    const ITEMS: usize = 12;
    dir.write(
        "policy.yaml",
        &format!(
            r#"version: 1
providers:
  llamacpp:
    kind: openai-compatible
    endpoints: [{{ url: "http://127.0.0.1:{}/v1", slots: 2 }}, {{ url: "http://127.0.0.1:{}/v1", slots: 2 }}]
models:
  local: {{ provider: llamacpp, model: gemma-3-270m, tier: local, context_window: 2048 }}
rules:
  - {{ name: all, use: local }}
"#,
            a.port, b.port
        ),
    );
    dir.write("wf.yaml", &pooled_workflow(ITEMS));
    let mut run = Cmd::new(
        dir.path(),
        &[
            "run",
            "wf.yaml",
            "--policy",
            "policy.yaml",
            "--concurrency",
            "4",
            "--format",
            "json",
        ],
    )
    .into_std()
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    // Kill b (SIGKILL, as a crashed or rebooted box) once it has answered,
    // while the others are still queued or in flight.
    let start = std::time::Instant::now();
    while b.finished() == 0 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(300),
            "b never answered"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        run.try_wait().unwrap().is_none(),
        "the run was still going when b was killed"
    );
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    let served_by_b = b.finished();
    let out = run.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let each = step(&r, "each");
    assert_eq!(each["status"], "succeeded", "{each}");
    let outputs = each["output"].as_array().unwrap();
    assert_eq!(outputs.len(), ITEMS, "{each}");
    assert!(
        outputs
            .iter()
            .all(|o| o.as_str().is_some_and(|s| !s.is_empty())),
        "every item has its answer: {each}"
    );
    eprintln!(
        "b served {served_by_b} before it was killed, a {}",
        a.finished()
    );
    // Both servers did real work: b until it was killed, a the rest
    // (including whatever b had in flight).
    assert!(served_by_b >= 1, "b served {served_by_b}");
    assert!(
        a.finished() >= ITEMS.saturating_sub(served_by_b),
        "a served {} of the {} b did not",
        a.finished(),
        ITEMS - served_by_b
    );
}

/// `launch` on a pool: tollgate starts two llama-servers of the model (one
/// per endpoint), spreads a 20-item `for_each` over both, and stops both.
#[test]
fn a_launched_pool_of_two_real_servers_shares_the_items_and_is_stopped() {
    let Some((server, model)) = installed() else {
        return;
    };
    let dir = Project::empty();
    let (a, b) = (free_port(), free_port());
    assert_ne!(a, b);
    const ITEMS: usize = 20;
    dir.write(
        "policy.yaml",
        &format!(
            r#"version: 1
providers:
  llamacpp:
    kind: openai-compatible
    endpoints: [{{ url: "http://127.0.0.1:{a}/v1", slots: 2 }}, {{ url: "http://127.0.0.1:{b}/v1", slots: 2 }}]
    launch:
      binary: "{}"
      model: "{}"
      context: 2048
      threads: 1
      ready_timeout: 120s
      args: ["--alias", "gemma-3-270m"]
models:
  local: {{ provider: llamacpp, model: gemma-3-270m, tier: local, context_window: 2048 }}
rules:
  - {{ name: all, use: local }}
"#,
            server.display(),
            model.display()
        ),
    );
    dir.write("wf.yaml", &pooled_workflow(ITEMS));
    let out = Cmd::new(
        dir.path(),
        &[
            "run",
            "wf.yaml",
            "--policy",
            "policy.yaml",
            "--concurrency",
            "4",
            "--format",
            "json",
        ],
    )
    .output();
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let each = step(&r, "each");
    assert_eq!(each["status"], "succeeded", "{each}");
    let outputs = each["output"].as_array().unwrap();
    assert_eq!(outputs.len(), ITEMS, "{each}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for port in [a, b] {
        assert!(
            stderr.contains(&format!("server llamacpp-{port} started in")),
            "{stderr}"
        );
    }
    // Each server's own log (llama-server logs a slot's release per request).
    let served = |port: u16| {
        std::fs::read_to_string(
            dir.path()
                .join(format!(".tollgate/logs/llamacpp-{port}.log")),
        )
        .unwrap_or_default()
        .matches("stop processing")
        .count()
    };
    let (by_a, by_b) = (served(a), served(b));
    eprintln!("a served {by_a}, b {by_b}");
    assert!(by_a >= 1 && by_b >= 1, "a {by_a}, b {by_b}: {stderr}");
    assert_eq!(by_a + by_b, ITEMS, "{stderr}");
    for port in [a, b] {
        assert!(!answers(port), "the server on {port} is still running");
        assert!(
            !dir.path()
                .join(format!(".tollgate/logs/llamacpp-{port}.pid"))
                .exists()
        );
    }
}

/// The pool tests' workflow: one classification per item of a `for_each`
/// over `n` tickets (the input's default).
fn pooled_workflow(n: usize) -> String {
    let items: Vec<String> = (1..=n).map(|i| format!("\"ticket {i}\"")).collect();
    format!(
        r#"version: 1
name: pooled
inputs:
  items: {{ type: array, default: [{}] }}
steps:
  each:
    task: classify
    for_each: inputs.items
    prompt: "Is this a bug or a feature? {{{{ item }}}}"
    max_output_tokens: 8
    temperature: 0
"#,
        items.join(", ")
    )
}
