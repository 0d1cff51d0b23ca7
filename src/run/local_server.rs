//! Managed local servers: a provider whose policy entry has `launch` gets its
//! llama.cpp `llama-server` started the first time a call needs it — unless
//! something already answers its `/health`, which is then simply used — and
//! stopped when the run ends, whatever the reason (success, failure, Ctrl-C:
//! the child is also killed if this value is dropped).
//!
//! A pool with `launch` gets one server per endpoint, all started at once;
//! the pool goes on with those that came up (the others are reported, and
//! the pool takes their endpoints out on the first refused connection),
//! and fails only when none did. Each server has its own files, named by
//! [`Launch::id`] (`PROVIDER-PORT` in a pool).
//!
//! A run killed outright (SIGKILL, OOM killer, power) cannot stop its server.
//! So a started server is written down in `<log dir>/<id>.pid` (server
//! pid, port, the pid of the tollgate process that owns it), removed when
//! the server is stopped. A later run that finds the port answering, the
//! file there, its owner gone and the pid still that binary, adopts the
//! server: uses it and stops it at its own end. A server whose owner is
//! alive (a concurrent run) or that tollgate never started is left alone.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio::sync::{Mutex, OnceCell};

use crate::policy::{Launch, Policy, Server};

/// Why a provider's local server could not be started. Each message is
/// worded exactly as before this type existed (it ends in a call's error,
/// the step's `detail`), and names the command and log where they exist.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(
        "cannot start the local server of provider `{provider}`: `{binary}` was not found (on PATH or in {}); run scripts/setup-local.sh, or set `launch.binary`",
        searched.display()
    )]
    BinaryNotFound {
        provider: String,
        binary: String,
        /// The cache folder `setup-local.sh` installs into.
        searched: PathBuf,
    },
    #[error(
        "cannot start the local server of provider `{provider}`: `{binary}` was not found (on PATH or in {}); install Ollama (https://ollama.com/download), or set `launch.binary`",
        searched.display()
    )]
    OllamaNotFound {
        provider: String,
        binary: String,
        searched: PathBuf,
    },
    #[error(
        "cannot start the local server of provider `{provider}`: model file `{model}` does not exist; run scripts/setup-local.sh, or set `launch.model`"
    )]
    ModelMissing { provider: String, model: String },
    /// The log folder or file could not be created.
    #[error("cannot create {}: {source}", path.display())]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The log file's handle could not be shared with stderr.
    #[error("{0}")]
    LogHandle(std::io::Error),
    #[error("cannot start `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error(
        "the local server of provider `{provider}` exited ({status}) before it was ready. Command: {command}\nLast lines of {}:\n{tail}",
        log.display()
    )]
    Exited {
        provider: String,
        status: ExitStatus,
        command: String,
        log: PathBuf,
        tail: String,
    },
    #[error(
        "the local server of provider `{provider}` was not ready after {}s (launch.ready_timeout). Command: {command}\nLast lines of {}:\n{tail}",
        waited.as_secs_f64(),
        log.display()
    )]
    NotReady {
        provider: String,
        waited: Duration,
        command: String,
        log: PathBuf,
        tail: String,
    },
}

/// The servers of one run.
pub struct Servers {
    /// One start per provider (all of a pool's servers at once); its
    /// failure is kept (shared: every caller waiting for that start gets
    /// the same error).
    cells: HashMap<String, OnceCell<Result<(), Arc<ServerError>>>>,
    /// Servers this run started: (their [`Launch::id`], the child).
    children: Mutex<Vec<(String, Child)>>,
    /// Servers an earlier, killed run left behind, now ours: (id, pid).
    adopted: Mutex<Vec<(String, u32)>>,
    http: reqwest::Client,
    log_dir: PathBuf,
}

/// What the reporter is told about a server.
pub enum Started {
    /// Something already answered `/health`.
    AlreadyRunning,
    /// A server a killed run started was still running: used, and stopped
    /// with this run.
    Adopted { pid: u32 },
    /// Started by us, ready after this long.
    Launched {
        command: String,
        ready_after: Duration,
    },
    /// One of a pool's servers would not start; `up` of the pool's `of`
    /// servers did, and the pool goes on with them.
    Failed {
        error: Arc<ServerError>,
        up: usize,
        of: usize,
    },
}

impl Servers {
    pub fn new(policy: &Policy, log_dir: PathBuf) -> Servers {
        Servers {
            cells: policy
                .providers
                .iter()
                .filter(|(_, p)| !p.launch.is_empty())
                .map(|(k, _)| (k.clone(), OnceCell::new()))
                .collect(),
            children: Mutex::new(Vec::new()),
            adopted: Mutex::new(Vec::new()),
            // The health check only ever asks the launched server itself:
            // never a redirect to somewhere else, never through a proxy.
            http: crate::provider::client_builder()
                .timeout(Duration::from_secs(2))
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .build()
                .unwrap_or_default(),
            log_dir,
        }
    }

    /// Makes sure the provider's servers answer; starts them once if
    /// needed (a pool's all at once). `on_start` hears about each server
    /// (for progress) once at least one is up; when none came up, the
    /// first one's error is the provider's. Every caller of the same
    /// provider waits for the same start.
    pub async fn ensure(
        &self,
        provider: &str,
        launches: &[Launch],
        mut on_start: impl FnMut(&Launch, &Started),
    ) -> Result<(), Arc<ServerError>> {
        let Some(cell) = self.cells.get(provider) else {
            return Ok(());
        };
        cell.get_or_init(|| async {
            let results =
                futures::future::join_all(launches.iter().map(|l| self.start(provider, l))).await;
            let up = results.iter().filter(|r| r.is_ok()).count();
            if up == 0 {
                return match results.into_iter().find_map(Result::err) {
                    Some(e) => Err(Arc::new(e)),
                    None => Ok(()),
                };
            }
            let of = launches.len();
            for (launch, result) in launches.iter().zip(results) {
                let started = result.unwrap_or_else(|e| Started::Failed {
                    error: Arc::new(e),
                    up,
                    of,
                });
                on_start(launch, &started);
            }
            Ok(())
        })
        .await
        .clone()
    }

    async fn healthy(&self, launch: &Launch) -> bool {
        // Ollama has no `/health`; its version route answers once it serves.
        let path = match launch.server {
            Server::LlamaServer => "/health",
            Server::Ollama => "/api/version",
        };
        let url = format!(
            "http://{}:{}{path}",
            host_for_url(&launch.host),
            launch.port
        );
        matches!(self.http.get(url).send().await, Ok(r) if r.status().is_success())
    }

    fn pid_file(&self, id: &str) -> PathBuf {
        self.log_dir.join(format!("{id}.pid"))
    }

    /// The pid of a server on this port that a tollgate run started and,
    /// killed, could not stop; `None` for anything else (and a stale file is
    /// removed).
    fn orphan(&self, launch: &Launch) -> Option<u32> {
        let path = self.pid_file(&launch.id);
        let text = std::fs::read_to_string(&path).ok()?;
        let fields: Vec<i64> = text
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        let (pid, port, owner, owner_start) = match fields[..] {
            [pid, port, owner, start] => (pid as u32, port as u32, owner as u32, Some(start)),
            [pid, port, owner] => (pid as u32, port as u32, owner as u32, None),
            _ => {
                let _ = std::fs::remove_file(&path);
                return None;
            }
        };
        if crate::process::process_alive_since(owner, owner_start) {
            // Its run is still going (another process): not ours to stop.
            return None;
        }
        let binary = expand(&launch.binary);
        let wanted = Path::new(&binary).file_name()?.to_owned();
        let is_that_server = port == u32::from(launch.port)
            && crate::process::process_alive(pid)
            && std::fs::read(format!("/proc/{pid}/cmdline"))
                .ok()
                .and_then(|c| {
                    let argv0 = c.split(|b| *b == 0).next()?.to_vec();
                    Some(
                        Path::new(&String::from_utf8_lossy(&argv0).into_owned()).file_name()?
                            == wanted,
                    )
                })
                .unwrap_or(false);
        if !is_that_server {
            let _ = std::fs::remove_file(&path);
            return None;
        }
        Some(pid)
    }

    async fn start(&self, provider: &str, launch: &Launch) -> Result<Started, ServerError> {
        if self.healthy(launch).await {
            if let Some(pid) = self.orphan(launch) {
                // Ours now: the file names this process as its owner.
                let _ = std::fs::write(self.pid_file(&launch.id), pid_line(pid, launch.port));
                self.adopted.lock().await.push((launch.id.clone(), pid));
                return Ok(Started::Adopted { pid });
            }
            return Ok(Started::AlreadyRunning);
        }
        let binary = resolve_binary(&expand(&launch.binary)).ok_or_else(|| {
            let (provider, binary, searched) = (
                provider.to_owned(),
                expand(&launch.binary),
                cache_dir().join("bin"),
            );
            // setup-local.sh installs llama-server, not Ollama.
            match launch.server {
                Server::LlamaServer => ServerError::BinaryNotFound {
                    provider,
                    binary,
                    searched,
                },
                Server::Ollama => ServerError::OllamaNotFound {
                    provider,
                    binary,
                    searched,
                },
            }
        })?;
        if launch.server == Server::LlamaServer {
            let model = expand(&launch.model);
            if !Path::new(&model).is_file() {
                return Err(ServerError::ModelMissing {
                    provider: provider.to_owned(),
                    model,
                });
            }
        }
        let ServerCommand {
            mut args,
            env,
            shown_args,
        } = server_command(launch);
        let command = format!("{} {}", binary.display(), shown_args.join(" "));
        args.extend(launch.args.iter().map(|a| expand(a)));

        std::fs::create_dir_all(&self.log_dir).map_err(|source| ServerError::Log {
            path: self.log_dir.clone(),
            source,
        })?;
        let log_path = self.log_dir.join(format!("{}.log", launch.id));
        let log = std::fs::File::create(&log_path).map_err(|source| ServerError::Log {
            path: log_path.clone(),
            source,
        })?;
        let err_log = log.try_clone().map_err(ServerError::LogHandle)?;
        let mut cmd = Command::new(&binary);
        cmd.envs(env);
        // ggml's OpenMP threads spin while waiting by default, which starves
        // everything else on a small machine (and the server itself when
        // anything else runs): generation falls from ~40 to ~1 token/s on
        // two busy cores. Passive waiting costs little when idle.
        if std::env::var_os("OMP_WAIT_POLICY").is_none() {
            cmd.env("OMP_WAIT_POLICY", "passive");
        }
        let mut child = cmd
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err_log))
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ServerError::Spawn {
                command: command.clone(),
                source,
            })?;

        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(ServerError::Exited {
                    provider: provider.to_owned(),
                    status,
                    command,
                    tail: tail(&log_path, 15),
                    log: log_path,
                });
            }
            if self.healthy(launch).await {
                if let Some(pid) = child.id() {
                    // Best effort: without it a killed run's server is
                    // merely left running, as before.
                    let _ = std::fs::write(self.pid_file(&launch.id), pid_line(pid, launch.port));
                }
                self.children.lock().await.push((launch.id.clone(), child));
                return Ok(Started::Launched {
                    command,
                    ready_after: started.elapsed(),
                });
            }
            if started.elapsed() > launch.ready_timeout {
                let _ = child.kill().await;
                return Err(ServerError::NotReady {
                    provider: provider.to_owned(),
                    waited: launch.ready_timeout,
                    command,
                    tail: tail(&log_path, 15),
                    log: log_path,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops every server this run started or adopted.
    pub async fn shutdown(&self) {
        let mut children = self.children.lock().await;
        for (id, child) in children.iter_mut() {
            let _ = child.kill().await;
            let _ = std::fs::remove_file(self.pid_file(id));
        }
        children.clear();
        let mut adopted = self.adopted.lock().await;
        for (id, pid) in adopted.drain(..) {
            stop_process(pid).await;
            let _ = std::fs::remove_file(self.pid_file(&id));
        }
    }
}

/// The pid file's line: the server, its port, and this process (pid and
/// start time) as its owner.
/// What `launch` runs, before the policy's extra `args` (expanded by the
/// caller): the arguments, the environment it adds, and the arguments as
/// shown in progress lines, errors and run.json — the extra arguments as the
/// policy wrote them, so a `${VAR}` holding a secret (say, `--api-key
/// ${LLAMA_KEY}`) is never printed expanded.
#[derive(Debug, PartialEq, Eq)]
pub struct ServerCommand {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub shown_args: Vec<String>,
}

/// The command line of a provider's server: `llama-server -m MODEL --host
/// … --port … -c … -t … --parallel …`, or `ollama serve` with its address in
/// `OLLAMA_HOST` (Ollama takes no flags for it) and the slots in
/// `OLLAMA_NUM_PARALLEL`.
pub fn server_command(launch: &Launch) -> ServerCommand {
    let (args, env) = match launch.server {
        Server::LlamaServer => {
            let mut args: Vec<String> = vec![
                "-m".into(),
                expand(&launch.model),
                "--host".into(),
                launch.host.clone(),
                "--port".into(),
                launch.port.to_string(),
                "-c".into(),
                launch.context.to_string(),
                "-t".into(),
                launch.threads.to_string(),
                "--parallel".into(),
                launch.slots.to_string(),
            ];
            if let Some(t) = &launch.chat_template {
                args.extend(["--chat-template".into(), t.clone()]);
            }
            (args, Vec::new())
        }
        Server::Ollama => (
            vec!["serve".to_owned()],
            vec![
                (
                    "OLLAMA_HOST".to_owned(),
                    format!("{}:{}", host_for_url(&launch.host), launch.port),
                ),
                ("OLLAMA_NUM_PARALLEL".to_owned(), launch.slots.to_string()),
            ],
        ),
    };
    let shown_args = args
        .iter()
        .cloned()
        .chain(launch.args.iter().cloned())
        .collect();
    ServerCommand {
        args,
        env,
        shown_args,
    }
}

fn pid_line(pid: u32, port: u16) -> String {
    let owner_start = crate::process::own_start()
        .map(|s| format!(" {s}"))
        .unwrap_or_default();
    format!("{pid} {port} {}{owner_start}\n", std::process::id())
}

/// Stops a process that is not our child: SIGTERM, then SIGKILL if it has
/// not gone within 5 s (through `kill(1)`: this crate has no unsafe code).
async fn stop_process(pid: u32) {
    let kill = |signal: &str| {
        let _ = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    };
    kill("-TERM");
    let deadline = Instant::now() + Duration::from_secs(5);
    while crate::process::process_alive(pid) {
        if Instant::now() > deadline {
            kill("-KILL");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn host_for_url(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// `${TOLLGATE_CACHE:-~/.cache/tollgate}`.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("TOLLGATE_CACHE") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => home().join(".cache/tollgate"),
    }
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/"), PathBuf::from)
}

/// Expands `${VAR}`, `${VAR:-default}` and a leading `~/`.
pub fn expand(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        let value = match std::env::var(name) {
            Ok(v) if !v.is_empty() => v,
            _ => default.map(expand).unwrap_or_default(),
        };
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    match out.strip_prefix("~/") {
        Some(r) => home().join(r).display().to_string(),
        None => out,
    }
}

/// A path, or a name looked up on PATH and then in the cache's `bin/`.
fn resolve_binary(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push(cache_dir().join("bin"));
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// How much of a server's log [`tail`] reads.
const TAIL_BYTES: u64 = 64 * 1024;

/// The last `n` lines of a server's log, read from at most its last
/// [`TAIL_BYTES`]: the server writes the log, and a server that floods it
/// must not make an error message read gigabytes.
fn tail(path: &Path, n: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut bytes = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let len = f.metadata().map_or(0, |m| m.len());
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)));
        let _ = f.take(TAIL_BYTES).read_to_end(&mut bytes);
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..]
        .iter()
        .map(|l| format!("  | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch_of(provider: &str) -> Launch {
        let text = r#"version: 1
name: p
providers:
  o: { kind: ollama, launch: { slots: 2, args: ["--verbose"] } }
  l: { kind: openai-compatible, base_url: "http://127.0.0.1:8080/v1", launch: { model: /m.gguf, chat_template: gemma } }
models:
  a: { provider: o, model: "qwen3:8b", tier: local, context_window: 8192 }
  b: { provider: l, model: g, tier: local, context_window: 4096 }
rules:
  - { name: all, use: a }
"#;
        let (_, policy) = crate::policy::load_text("p.yaml", text).expect("the policy compiles");
        policy.providers[provider].launch[0].clone()
    }

    #[test]
    fn ollama_is_started_as_ollama_serve_on_the_providers_address() {
        let launch = launch_of("o");
        assert_eq!(
            (launch.server, launch.binary.as_str()),
            (Server::Ollama, "ollama")
        );
        let c = server_command(&launch);
        assert_eq!(c.args, ["serve"]);
        assert_eq!(
            c.env,
            [
                ("OLLAMA_HOST".to_owned(), "127.0.0.1:11434".to_owned()),
                ("OLLAMA_NUM_PARALLEL".to_owned(), "2".to_owned())
            ]
        );
        assert_eq!(c.shown_args, ["serve", "--verbose"]);
        // llama-server keeps its flags.
        let c = server_command(&launch_of("l"));
        assert_eq!(
            c.args.join(" "),
            "-m /m.gguf --host 127.0.0.1 --port 8080 -c 4096 -t 2 --parallel 1 --chat-template gemma"
        );
        assert!(c.env.is_empty());
    }

    #[test]
    fn a_flooded_log_is_quoted_from_its_end_only() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("server.log");
        // 8 MiB of one line with no break, then the lines that matter.
        let mut text = "x".repeat(8 << 20);
        text.push_str("\nloading model\nerror: out of memory\n");
        std::fs::write(&log, text).unwrap();
        let quoted = tail(&log, 2);
        assert_eq!(quoted, "  | loading model\n  | error: out of memory");
        // Asked for more lines than the bounded read holds: still bounded.
        assert!(tail(&log, 1000).len() <= TAIL_BYTES as usize + 1000 * 4);
    }

    #[test]
    fn expands_variables_defaults_and_home() {
        // SAFETY-free: set_var is safe in edition 2024 only in unsafe; use
        // variables that are always present instead.
        let home = home().display().to_string();
        assert_eq!(expand("~/x"), format!("{home}/x"));
        assert_eq!(
            expand("${TOLLGATE_SURELY_UNSET_VAR:-fallback}/m.gguf"),
            "fallback/m.gguf"
        );
        assert_eq!(expand("${HOME}/a"), format!("{home}/a"));
        assert_eq!(
            expand("${TOLLGATE_SURELY_UNSET_VAR:-~/c}"),
            format!("{home}/c")
        );
        assert_eq!(expand("plain"), "plain");
    }

    #[tokio::test]
    async fn the_health_check_never_follows_a_redirect() {
        let target = fake_llm::FakeServer::start().await;
        let hostile = fake_llm::HostileServer::start(fake_llm::Misbehaviour::Redirect {
            status: 302,
            location: format!("{}/health", target.base_url()),
        })
        .await;
        let port = hostile.base_url().rsplit(':').next().unwrap().to_owned();
        let text = format!(
            "version: 1\nproviders:\n  local: {{kind: openai-compatible, base_url: \"http://127.0.0.1:{port}/v1\", launch: {{model: /nonexistent.gguf, binary: /nonexistent-llama-server}}}}\nmodels:\n  m: {{provider: local, model: m, tier: local, context_window: 4096}}\nrules:\n  - {{name: all, use: m}}\n"
        );
        let doc = crate::yaml::Document::parse(crate::diagnostic::SourceFile::new("p.yaml", text))
            .unwrap();
        let file: crate::workflow::Loaded<crate::policy::PolicyFile> =
            crate::workflow::from_document(doc, crate::schema::Format::Policy).unwrap();
        let (policy, diags) =
            crate::policy::compile(&file.value, &file.doc, crate::catalog::Catalog::builtin());
        assert!(!diags.iter().any(|d| d.is_error()), "{diags:?}");
        let launch = policy.providers["local"].launch[0].clone();
        let log_dir = std::env::temp_dir();
        let servers = Servers::new(&policy, log_dir);
        // Not healthy (a redirect is no answer), and the server was asked,
        // never the address the redirect named.
        assert!(!servers.healthy(&launch).await);
        assert_eq!(hostile.seen().len(), 1);
        assert_eq!(target.request_count(), 0);
    }
}
