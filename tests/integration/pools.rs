//! Endpoint pools: a provider with several servers of one model. Calls
//! spread over the endpoints by their slots, a dead endpoint's calls go to
//! the others (no item lost, none sent twice), an endpoint that comes back
//! is found by its `/health`, and every endpoint down is one clear error.
//! The policy's pool rules (which kinds, locality, duplicates) are checked
//! at load time.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fake_llm::{FakeServer, Health, HostileServer, Misbehaviour, Reply};
use futures::future::BoxFuture;
use tollgate::provider::pool::{Member, Pool, PoolConfig};
use tollgate::provider::{
    ChatRequest, ChatResponse, ClientConfig, ErrorKind, Http, Provider, ProviderError,
    ProviderKind, Usage, client_for,
};

use crate::assert_output_snapshot;
use crate::support::*;

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    l.local_addr().expect("its address").port()
}

fn pool_policy(endpoints: &str, extra: &str) -> String {
    format!(
        r#"version: 1
providers:
  local: {{ kind: openai-compatible, endpoints: [{endpoints}]{extra} }}
models:
  m: {{ provider: local, model: local-llm, tier: local, context_window: 8192 }}
rules:
  - {{ name: all, use: m }}
"#
    )
}

fn items_workflow(n: usize) -> String {
    let items: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
    format!(
        r#"version: 1
name: many
inputs:
  items: {{ type: array, default: [{}] }}
steps:
  each: {{ task: write, for_each: inputs.items, prompt: "item {{{{ item }}}}", max_output_tokens: 50 }}
"#,
        items.join(", ")
    )
}

/// Every item of the `each` step answered.
fn assert_all_answered(out: &std::process::Output, n: usize) {
    assert_eq!(out.status.code(), Some(0), "{}", transcript(out));
    let r = report(out);
    let each = step(&r, "each");
    assert_eq!(each["status"], "succeeded", "{each}");
    assert_eq!(
        each["output"].as_array().map(Vec::len),
        Some(n),
        "{}",
        each["output"]
    );
}

/// The prompts a fake was sent (`item N`), to check no item went twice.
fn prompts(fake: &FakeServer) -> Vec<String> {
    fake.requests()
        .iter()
        .filter_map(|r| {
            r.body
                .pointer("/messages/0/content")
                .and_then(|c| c.as_str())
                .map(str::to_owned)
        })
        .collect()
}

fn assert_each_item_once(fakes: &[&FakeServer], n: usize) {
    let mut all: Vec<String> = fakes.iter().flat_map(|f| prompts(f)).collect();
    all.sort();
    let mut expected: Vec<String> = (1..=n).map(|i| format!("item {i}")).collect();
    expected.sort();
    assert_eq!(all, expected, "an item was lost or sent twice");
}

// ---------------------------------------------------------------------------
// End to end.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_spread_over_the_endpoints_within_their_slots() {
    let a = FakeServer::start().await;
    let b = FakeServer::start().await;
    for f in [&a, &b] {
        f.set_default(
            Reply::text("ok")
                .usage(3, 1)
                .delay(Duration::from_millis(20)),
        );
    }
    let p = Project::new(
        &pool_policy(
            &format!(
                r#""{}/v1", {{ url: "{}/v1", slots: 3 }}"#,
                a.base_url(),
                b.base_url()
            ),
            "",
        ),
        &items_workflow(24),
    );
    let out = p.run(&["--format", "json", "--concurrency", "8"]).await;
    assert_all_answered(&out, 24);
    assert_each_item_once(&[&a, &b], 24);
    assert!(a.max_in_flight() <= 1, "endpoint a has one slot");
    assert!(b.max_in_flight() <= 3, "endpoint b has three slots");
    assert_eq!(a.health_checks() + b.health_checks(), 0, "nothing failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_refuses_connections_leaves_its_calls_to_the_others() {
    let live = FakeServer::start().await;
    live.set_default(Reply::text("ok").usage(3, 1));
    let dead = format!("http://127.0.0.1:{}/v1", closed_port());
    let p = Project::new(
        &pool_policy(
            &format!(r#"{{ url: "{dead}", slots: 4 }}, "{}/v1""#, live.base_url()),
            "",
        ),
        &items_workflow(12),
    );
    let out = p.run(&["--format", "json", "--concurrency", "4"]).await;
    assert_all_answered(&out, 12);
    assert_each_item_once(&[&live], 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_shut_down_mid_run_loses_no_item_and_sends_none_twice() {
    let a = FakeServer::start().await;
    let b = FakeServer::start().await;
    a.set_default(
        Reply::text("ok")
            .usage(3, 1)
            .delay(Duration::from_millis(10)),
    );
    // b stops after its third request, as a stopped llama-server does: it
    // answers what it received, then refuses connections.
    let stop = b.shutdown_handle();
    let seen = Arc::new(AtomicUsize::new(0));
    let seen_in_handler = Arc::clone(&seen);
    b.set_handler(move |_| {
        if seen_in_handler.fetch_add(1, Ordering::SeqCst) + 1 == 3 {
            stop.shutdown();
        }
        Reply::text("ok")
            .usage(3, 1)
            .delay(Duration::from_millis(10))
    });
    let p = Project::new(
        &pool_policy(
            &format!(
                r#"{{ url: "{}/v1", slots: 2 }}, {{ url: "{}/v1", slots: 2 }}"#,
                b.base_url(),
                a.base_url()
            ),
            "",
        ),
        &items_workflow(20),
    );
    let out = p.run(&["--format", "json", "--concurrency", "4"]).await;
    assert_all_answered(&out, 20);
    assert!(b.request_count() >= 3, "b served until it stopped");
    assert_each_item_once(&[&a, &b], 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_down_is_one_error_naming_them() {
    let (p1, p2) = (closed_port(), closed_port());
    let p = Project::new(
        &pool_policy(
            &format!(r#""http://127.0.0.1:{p1}/v1", "http://127.0.0.1:{p2}/v1""#),
            "",
        ),
        &items_workflow(2),
    );
    let out = p.run(&["--format", "json"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let detail = step(&report(&out), "each")["detail"].to_string();
    assert!(
        detail.contains("every endpoint of pool `local` is down")
            || detail.contains("every endpoint of pool `local` failed"),
        "{detail}"
    );
    for port in [p1, p2] {
        assert!(detail.contains(&format!("127.0.0.1:{port}")), "{detail}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_endpoint_that_redirects_is_refused() {
    let target = FakeServer::start().await;
    let hostile = HostileServer::start(Misbehaviour::Redirect {
        status: 307,
        location: format!("{}/v1/chat/completions", target.base_url()),
    })
    .await;
    let p = Project::new(
        &pool_policy(&format!(r#""{}/v1""#, hostile.base_url()), ""),
        &items_workflow(1),
    );
    let out = p.run(&["--format", "json"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let detail = step(&report(&out), "each")["detail"].to_string();
    assert!(detail.contains("redirect"), "{detail}");
    assert_eq!(target.request_count(), 0, "a redirect was followed");
}

#[test]
fn plan_shows_the_pool() {
    let p = Project::new(
        &pool_policy(
            r#""http://127.0.0.1:8081/v1", { url: "http://127.0.0.1:8082/v1", slots: 4 }"#,
            "",
        ),
        &items_workflow(2),
    );
    let out = p
        .tollgate(&["plan", "wf.yaml", "--policy", "policy.yaml"])
        .output();
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    assert!(
        stdout(&out).contains("m → local local-llm (local tier, local, pool of 2 endpoints)"),
        "{}",
        transcript(&out)
    );
}

#[test]
fn pool_mistakes_are_located_errors() {
    let policy = r#"version: 1
providers:
  paid: { kind: openai, endpoints: ["https://api.openai.com/v1"] }
  both: { kind: openai-compatible, base_url: "http://127.0.0.1:8080/v1", endpoints: ["http://127.0.0.1:8081/v1"] }
  mixed: { kind: openai-compatible, endpoints: ["http://127.0.0.1:8081/v1", "http://10.0.0.7:8081/v1"] }
  twice:
    kind: openai-compatible
    endpoints:
      - http://127.0.0.1:8081/v1
      - { url: "http://127.0.0.1:8081/v1/", slots: 2 }
  launched:
    kind: openai-compatible
    locality: local
    endpoints: ["http://127.0.0.1:8083/v1", "http://127.0.0.1:8083/v1", "http://10.0.0.7:8083/v1"]
    launch: { model: /models/m.gguf, slots: 2 }
  lonely: { kind: openai-compatible, base_url: "http://127.0.0.1:8084/v1", sticky: prefix }
  shifted:
    kind: openai-compatible
    endpoints:
      - http://127.0.0.1:8085/v1
      - http://127.0.0.1:8085/v1/
      - http://10.0.0.7:8085/v1
models:
  m: { provider: twice, model: local-llm, tier: local, context_window: 8192 }
rules:
  - { name: all, use: m }
"#;
    let p = Project::new(policy, &items_workflow(1));
    let out = p.tollgate(&["check", "policy.yaml"]).output();
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    let _settings = stable_output(p.path()).bind_to_scope();
    assert_output_snapshot!("pool_mistakes", out);
}

#[test]
fn a_private_network_pool_is_local_when_declared() {
    let ok = pool_policy(
        r#""http://127.0.0.1:8081/v1", "http://10.0.0.7:8081/v1""#,
        ", locality: local",
    );
    let p = Project::new(&ok, &items_workflow(1));
    let out = p.tollgate(&["check", "policy.yaml"]).output();
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    // A remote pool that is not declared local is a cloud provider, each
    // plain-http endpoint warned about where it is written.
    let remote = pool_policy(
        r#""http://10.0.0.7:8081/v1", "https://10.0.0.8/v1", "http://10.0.0.9:8081/v1""#,
        "",
    );
    let p = Project::new(&remote, &items_workflow(1));
    let out = p.tollgate(&["check", "policy.yaml"]).output();
    let err = stderr(&out);
    assert_eq!(
        err.matches("reached over plain http://").count(),
        2,
        "{err}"
    );
    assert!(err.contains("policy.yaml:3:"), "{err}");
}

// ---------------------------------------------------------------------------
// The pool itself, over controllable servers.

fn fake_pool(fakes: &[(&FakeServer, u32)], config: PoolConfig) -> Pool {
    let http = Http::without_proxy(Duration::from_secs(2));
    let members = fakes
        .iter()
        .map(|(f, slots)| {
            let url = format!("{}/v1", f.base_url());
            Member {
                client: client_for(
                    ProviderKind::OpenaiCompatible,
                    ClientConfig::new(url.clone()),
                    http.clone(),
                ),
                url,
                slots: *slots,
            }
        })
        .collect();
    Pool::new("local", members, &http, config)
}

fn free_pool() -> PoolConfig {
    PoolConfig {
        failover: true,
        ..PoolConfig::default()
    }
}

#[tokio::test]
async fn a_loading_endpoint_is_taken_out_and_probed_back_by_health() {
    let a = FakeServer::start().await;
    let b = FakeServer::start().await;
    a.set_health(Health::Loading);
    let pool = fake_pool(
        &[(&a, 1), (&b, 1)],
        PoolConfig {
            // Due for a probe at once: the test does not wait.
            probe_min: Duration::ZERO,
            ..free_pool()
        },
    );
    let req = ChatRequest::new("local-llm", "hello");
    // a is first, answers 503 "Loading model", its /health agrees: out, and
    // the call is answered by b.
    pool.send(&req).await.expect("b answers");
    assert_eq!((a.request_count(), b.request_count()), (1, 1));
    assert_eq!(pool.healthy(), [false, true]);
    // Still loading: the next call probes a, finds it loading, uses b.
    pool.send(&req).await.expect("b answers");
    assert_eq!((a.request_count(), b.request_count()), (1, 2));
    // Loaded: the probe brings it back, and the least busy (a, first) serves.
    a.set_health(Health::Ok);
    pool.send(&req).await.expect("a answers");
    assert_eq!((a.request_count(), b.request_count()), (2, 2));
    assert_eq!(pool.healthy(), [true, true]);
    assert!(a.health_checks() >= 3, "{}", a.health_checks());
}

#[tokio::test]
async fn an_endpoint_is_not_probed_before_its_wait_is_over() {
    let a = FakeServer::start().await;
    let b = FakeServer::start().await;
    a.set_health(Health::Loading);
    let pool = fake_pool(
        &[(&a, 1), (&b, 1)],
        PoolConfig {
            probe_min: Duration::from_secs(3600),
            ..free_pool()
        },
    );
    let req = ChatRequest::new("local-llm", "hello");
    for _ in 0..5 {
        pool.send(&req).await.expect("b answers");
    }
    assert_eq!(a.request_count(), 1);
    assert_eq!(a.health_checks(), 1, "only the probe that took it out");
    assert_eq!(pool.sent(), [1, 5]);
}

#[tokio::test]
async fn a_server_error_on_a_healthy_endpoint_is_the_requests_own() {
    // A 500 the server gives one request says nothing about the server:
    // the error is the call's, the endpoint stays in, nothing is resent.
    let a = FakeServer::start().await;
    let b = FakeServer::start().await;
    a.push(Reply::status(500));
    let pool = fake_pool(&[(&a, 1), (&b, 1)], free_pool());
    let e = pool
        .send(&ChatRequest::new("local-llm", "hello"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Server, "{e:?}");
    assert_eq!((a.request_count(), b.request_count()), (1, 0));
    assert_eq!(pool.healthy(), [true, true]);
}

#[tokio::test]
async fn a_priced_pool_never_sends_a_call_twice() {
    // Without failover (a model with a price), a dead endpoint's error is
    // the call's; the endpoint is out, so the executor's retry goes elsewhere.
    let a = FakeServer::start().await;
    a.set_health(Health::Loading);
    let b = FakeServer::start().await;
    let pool = fake_pool(&[(&a, 1), (&b, 1)], PoolConfig::default());
    let req = ChatRequest::new("local-llm", "hello");
    let e = pool.send(&req).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Overloaded, "{e:?}");
    assert!(e.message.contains(&a.base_url()), "{}", e.message);
    assert_eq!((a.request_count(), b.request_count()), (1, 0));
    pool.send(&req).await.expect("b answers the retry");
    assert_eq!((a.request_count(), b.request_count()), (1, 1));
}

#[tokio::test]
async fn every_endpoint_down_fails_at_once() {
    let urls = [closed_port(), closed_port()].map(|p| format!("http://127.0.0.1:{p}/v1"));
    let http = Http::without_proxy(Duration::from_secs(2));
    let members = urls
        .iter()
        .map(|u| Member {
            url: u.clone(),
            slots: 1,
            client: client_for(
                ProviderKind::OpenaiCompatible,
                ClientConfig::new(u.clone()),
                http.clone(),
            ),
        })
        .collect();
    let config = PoolConfig {
        // Not due a probe again within the test.
        probe_min: Duration::from_secs(3600),
        ..free_pool()
    };
    let pool = Pool::new("local", members, &http, config);
    let req = ChatRequest::new("local-llm", "hello");
    let e = pool.send(&req).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Connect);
    assert!(
        e.message.contains("every endpoint of pool `local` failed"),
        "{}",
        e.message
    );
    // Both are out now, not due a probe: the next call is refused at once.
    let e = pool.send(&req).await.unwrap_err();
    assert!(
        e.message.contains("every endpoint of pool `local` is down"),
        "{}",
        e.message
    );
    for u in &urls {
        assert!(e.message.contains(u.as_str()), "{}", e.message);
    }
}

/// A server double that holds each call until the test releases one.
struct Held {
    entered: AtomicUsize,
    release: tokio::sync::Semaphore,
}

impl Held {
    fn new() -> Arc<Held> {
        Arc::new(Held {
            entered: AtomicUsize::new(0),
            release: tokio::sync::Semaphore::new(0),
        })
    }

    fn entered(&self) -> usize {
        self.entered.load(Ordering::SeqCst)
    }
}

impl Provider for Held {
    fn kind(&self) -> ProviderKind {
        ProviderKind::OpenaiCompatible
    }

    fn send<'a>(
        &'a self,
        _req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, ProviderError>> {
        Box::pin(async move {
            self.entered.fetch_add(1, Ordering::SeqCst);
            self.release
                .acquire()
                .await
                .expect("the semaphore stays open")
                .forget();
            Ok(ChatResponse {
                endpoint: None,
                text: "ok".into(),
                usage: Usage::default(),
                cost_usd: None,
                finish_reason: Some("stop".into()),
                model: "local-llm".into(),
                request_id: None,
                time_to_first_token: None,
                latency: Duration::ZERO,
                logprobs: None,
            })
        })
    }
}

async fn until(mut done: impl FnMut() -> bool) {
    while !done() {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_least_busy_endpoint_for_its_slots_takes_the_call() {
    let (a, b) = (Held::new(), Held::new());
    let http = Http::without_proxy(Duration::from_secs(1));
    let member = |name: &str, held: &Arc<Held>, slots| Member {
        url: format!("http://127.0.0.1:1/{name}"),
        slots,
        client: Arc::clone(held) as Arc<dyn Provider>,
    };
    let pool = Arc::new(Pool::new(
        "local",
        vec![member("a", &a, 1), member("b", &b, 3)],
        &http,
        free_pool(),
    ));
    let call = || {
        let pool = Arc::clone(&pool);
        tokio::spawn(async move { pool.send(&ChatRequest::new("m", "x")).await })
    };
    let first: Vec<_> = (0..4).map(|_| call()).collect();
    until(|| a.entered() + b.entered() == 4).await;
    assert_eq!(
        (a.entered(), b.entered()),
        (1, 3),
        "by slots: a one, b three"
    );
    // Every slot is taken: a fifth call waits, then takes the first free one.
    let fifth = call();
    a.release.add_permits(1);
    until(|| a.entered() == 2).await;
    assert_eq!(b.entered(), 3);
    a.release.add_permits(1);
    b.release.add_permits(3);
    for h in first.into_iter().chain([fifth]) {
        h.await.expect("the task ends").expect("answered");
    }
    assert_eq!(pool.sent(), [2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_calls_with_one_prefix_stay_on_one_endpoint() {
    let fakes = [
        FakeServer::start().await,
        FakeServer::start().await,
        FakeServer::start().await,
    ];
    let pool = fake_pool(
        &[(&fakes[0], 4), (&fakes[1], 4), (&fakes[2], 4)],
        PoolConfig {
            sticky_prefix: true,
            ..free_pool()
        },
    );
    let shared = "You label support tickets. ".repeat(40);
    for i in 0..6 {
        pool.send(&ChatRequest::new("m", format!("{shared}ticket {i}")))
            .await
            .expect("answered");
    }
    let counts: Vec<usize> = fakes.iter().map(FakeServer::request_count).collect();
    assert_eq!(counts.iter().filter(|&&c| c == 6).count(), 1, "{counts:?}");
}

// ---------------------------------------------------------------------------
// `launch` on a pool: one server per endpoint, with a stand-in llama-server.

/// A stand-in for llama-server: on a port in `fail` it complains and exits
/// (as llama-server does on a bad model); elsewhere it writes its pid to
/// `started-PORT` in `dir` and waits to be stopped, under the binary's
/// name (`exec -a`, as the real server's command line would read). The
/// fake serving that port answers `/health` once the file exists (see
/// [`serve_when_started`]).
fn fake_llama_server(dir: &std::path::Path, fail: &[u16]) -> std::path::PathBuf {
    let bin = dir.join("llama-server");
    let fail: Vec<String> = fail.iter().map(u16::to_string).collect();
    let fail = if fail.is_empty() {
        "none".to_owned()
    } else {
        fail.join("|")
    };
    std::fs::write(
        &bin,
        format!(
            r#"#!/bin/bash
while [ $# -gt 0 ]; do
  if [ "$1" = --port ]; then port=$2; fi
  shift
done
case "$port" in
  {fail}) echo "llama_model_load: error loading model on $port" >&2; exit 1 ;;
esac
echo $$ > "{dir}/started-$port"
exec -a "$0" sleep 600
"#,
            dir = dir.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    bin
}

fn port_of(fake: &FakeServer) -> u16 {
    fake.base_url().rsplit(':').next().unwrap().parse().unwrap()
}

/// Keeps each fake "loading" (503 on `/health`, as a server loading its
/// model) until the stand-in server for its port has started.
fn serve_when_started(
    dir: &std::path::Path,
    fakes: &[Arc<FakeServer>],
) -> tokio::task::JoinHandle<()> {
    let mut pending: Vec<Arc<FakeServer>> = fakes.to_vec();
    for f in &pending {
        f.set_health(Health::Loading);
    }
    let dir = dir.to_owned();
    tokio::spawn(async move {
        while !pending.is_empty() {
            pending.retain(|f| {
                let started = dir.join(format!("started-{}", port_of(f))).is_file();
                if started {
                    f.set_health(Health::Ok);
                }
                !started
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

/// The pid a stand-in server wrote when it started on `port`.
fn started_pid(dir: &std::path::Path, port: u16) -> Option<u32> {
    std::fs::read_to_string(dir.join(format!("started-{port}")))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn launched_pool_policy(bin: &std::path::Path, endpoints: &[u16]) -> String {
    let endpoints: Vec<String> = endpoints
        .iter()
        .map(|p| format!(r#"{{ url: "http://127.0.0.1:{p}/v1", slots: 2 }}"#))
        .collect();
    format!(
        r#"version: 1
providers:
  pool:
    kind: openai-compatible
    endpoints: [{}]
    launch: {{ binary: "{}", model: "{}", ready_timeout: 30s }}
models:
  m: {{ provider: pool, model: local-llm, tier: local, context_window: 8192 }}
rules:
  - {{ name: all, use: m }}
"#,
        endpoints.join(", "),
        bin.display(),
        // Any file: the stand-in does not read it.
        bin.display()
    )
}

/// A launched pool of three: one server started by tollgate, one already
/// running (used, never touched), one that fails to start (the pool goes
/// on with two, and says so). Every item is answered; the started server
/// is stopped and its pid file removed; the running one still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launched_pool_starts_its_servers_goes_on_without_a_failed_one_and_stops_them() {
    let launched = Arc::new(FakeServer::start().await);
    let running = FakeServer::start().await;
    for f in [&*launched, &running] {
        f.set_default(
            Reply::text("ok")
                .usage(3, 1)
                .delay(Duration::from_millis(20)),
        );
    }
    let broken = closed_port();
    let p = Project::new("", &items_workflow(8));
    let bin = fake_llama_server(p.path(), &[broken]);
    let (lp, rp) = (port_of(&launched), port_of(&running));
    p.write(
        "policy.yaml",
        &launched_pool_policy(&bin, &[lp, rp, broken]),
    );
    let watcher = serve_when_started(p.path(), std::slice::from_ref(&launched));

    let out = p.run(&["--format", "json", "--concurrency", "4"]).await;
    watcher.abort();
    assert_all_answered(&out, 8);
    assert_each_item_once(&[&launched, &running], 8);
    assert!(launched.request_count() > 0 && running.request_count() > 0);
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "server pool-{broken} failed to start; the pool goes on with 2 of 3 servers"
        )),
        "{err}"
    );
    assert!(err.contains("error loading model"), "{err}");
    // Only the server it started is stopped.
    let pid = started_pid(p.path(), lp).expect("the launched server started");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the launched server {pid} is still running"
    );
    assert!(
        started_pid(p.path(), rp).is_none(),
        "the running server was started again"
    );
    assert!(p.exists(&format!(".tollgate/logs/pool-{lp}.log")));
    assert!(!p.exists(&format!(".tollgate/logs/pool-{lp}.pid")));
    let health = reqwest::get(format!("{}/health", running.base_url()))
        .await
        .unwrap();
    assert!(health.status().is_success());
}

/// No server of the pool starts: the step fails with the first server's
/// error, as a single launched server's would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launched_pool_with_no_server_up_fails_with_the_servers_error() {
    let (a, b) = (closed_port(), closed_port());
    let p = Project::new("", &items_workflow(2));
    let bin = fake_llama_server(p.path(), &[a, b]);
    p.write("policy.yaml", &launched_pool_policy(&bin, &[a, b]));
    let out = p.run(&["--format", "json"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let r = report(&out);
    let detail = step(&r, "each")["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(detail.contains("exited"), "{detail}");
    assert!(
        detail.contains(&format!("error loading model on {a}")),
        "{detail}"
    );
}

/// A killed run's pool servers are adopted by the next run (each by its
/// own pid file) and stopped at its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_runs_pool_servers_are_adopted_and_stopped() {
    let a = FakeServer::start().await;
    let b = FakeServer::start().await;
    let p = Project::new("", &items_workflow(4));
    let bin = fake_llama_server(p.path(), &[]);
    let ports = [port_of(&a), port_of(&b)];
    p.write("policy.yaml", &launched_pool_policy(&bin, &ports));
    // What a killed run leaves: its servers running, their pid files
    // naming an owner that is gone.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let owner = gone.id();
    gone.wait().unwrap();
    let mut left = Vec::new();
    for port in ports {
        let child = std::process::Command::new(&bin)
            .args(["-m", "x", "--port", &port.to_string()])
            .spawn()
            .unwrap();
        while started_pid(p.path(), port).is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        p.write(
            &format!(".tollgate/logs/pool-{port}.pid"),
            &format!("{} {port} {owner}\n", child.id()),
        );
        left.push(child);
    }
    let out = p.run(&["--format", "json"]).await;
    assert_all_answered(&out, 4);
    assert_eq!(
        stderr(&out)
            .matches("adopted, it stops with this run")
            .count(),
        2,
        "{}",
        transcript(&out)
    );
    for (mut child, port) in left.into_iter().zip(ports) {
        // Stopped by the run (SIGTERM): reaped here, its file gone.
        let status = child.wait().unwrap();
        assert!(!status.success(), "{status:?}");
        assert!(!p.exists(&format!(".tollgate/logs/pool-{port}.pid")));
    }
}

/// `plan` says which servers a run will start.
#[test]
fn plan_shows_the_servers_a_pool_launches() {
    let p = Project::new("", &items_workflow(2));
    p.write(
        "policy.yaml",
        &launched_pool_policy(std::path::Path::new("/opt/llama-server"), &[8081, 8082]),
    );
    let out = p
        .tollgate(&["plan", "wf.yaml", "--policy", "policy.yaml"])
        .output();
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    assert!(
        stdout(&out).contains("  launches     pool: llama-server on 127.0.0.1:8081 (2 slots), 127.0.0.1:8082 (2 slots), unless already running; stopped when the run ends"),
        "{}",
        transcript(&out)
    );
    let out = p
        .tollgate(&[
            "plan",
            "wf.yaml",
            "--policy",
            "policy.yaml",
            "--format",
            "json",
        ])
        .output();
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        plan["servers"][0]["addresses"][1]["address"],
        "127.0.0.1:8082"
    );
}

/// Which server answered is journaled with each call and `report` splits a
/// pool's calls by it (text and JSON): each endpoint's line counts exactly
/// the calls its server answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_splits_a_pools_calls_by_the_endpoint_that_answered() {
    let a = FakeServer::start().await;
    let b = FakeServer::start().await;
    for f in [&a, &b] {
        f.set_default(
            Reply::text("ok")
                .usage(3, 1)
                .delay(Duration::from_millis(20)),
        );
    }
    let p = Project::new(
        &pool_policy(
            &format!(
                r#"{{ url: "{}/v1", slots: 2 }}, {{ url: "{}/v1", slots: 2 }}"#,
                a.base_url(),
                b.base_url()
            ),
            "",
        ),
        &items_workflow(12),
    );
    let out = p.run(&["--format", "json", "--concurrency", "4"]).await;
    assert_all_answered(&out, 12);
    let out = p.tollgate(&["report", "--format", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let r = report(&out);
    let lines: Vec<(String, u64)> = r["by_endpoint"]
        .as_array()
        .unwrap_or_else(|| panic!("by_endpoint in {r}"))
        .iter()
        .map(|l| {
            (
                l["key"].as_str().unwrap().to_owned(),
                l["calls"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut expected: Vec<(String, u64)> = [&a, &b]
        .iter()
        .map(|f| {
            (
                format!("local {}/v1", f.base_url()),
                f.request_count() as u64,
            )
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    expected.sort();
    assert_eq!(lines, expected, "{r}");
    assert_eq!(lines.iter().map(|l| l.1).sum::<u64>(), 12);
    let text = stdout(&p.tollgate(&["report"]).await);
    assert!(
        text.contains("\nBy endpoint\nENDPOINT ")
            && text.contains(&format!("local {}/v1", a.base_url())),
        "{text}"
    );
}
