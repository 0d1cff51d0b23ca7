//! What every integration test shares: a temporary project folder, the
//! `tollgate` binary run in it with a known environment, the loopback fake's
//! team policy, and the helpers that read a run's report or snapshot a
//! command's output.
//!
//! Invariants the tests rely on:
//! - The binary never sees the caller's `TOLLGATE_*`, `CI` or test-key
//!   variables: a command has exactly the environment its test gives it
//!   ([`Cmd::keys`], [`Cmd::env`]), so a developer's shell cannot change a
//!   result.
//! - A project is a folder with `.git`, so prompt files resolve inside it and
//!   the journal (`.tollgate/`) lives in it; it is deleted when dropped.
//! - Nothing that holds [`KEY`] is snapshotted: `insta-cmd` records a
//!   command's environment in the snapshot header, so keyed commands are
//!   snapshotted through [`assert_output_snapshot`] instead.

use std::future::{Future, IntoFuture};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Output};
use std::time::Duration;

use fake_llm::FakeServer;
use serde_json::Value;

pub mod pg;
pub use pg::{Ledger, TestDb};

/// The API key every keyed command is given; tests assert it never reaches an
/// output, a file or a request body.
pub const KEY: &str = "sk-test-7f3a9c1e-never-print-me";

/// The variables the team policies name for their keys.
pub const KEY_VARS: [&str; 3] = ["TEST_OPENAI_KEY", "TEST_ANTHROPIC_KEY", "TEST_GEMINI_KEY"];

/// Variables of the caller's shell that would change what the binary does.
const SCRUBBED: [&str; 24] = [
    "TOLLGATE_POLICY",
    "TOLLGATE_STATE",
    "TOLLGATE_STATE_URL",
    "PGPASSWORD",
    // TLS to the ledger: libpq's variables and the system CA store's.
    "PGSSLMODE",
    "PGSSLROOTCERT",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "TOLLGATE_TEST_NOW",
    "TOLLGATE_TEST_TODAY",
    "CI",
    "NO_COLOR",
    // Who ran a run (journal::who): a test sets what it checks; the CI
    // markers of the machine the tests run on never leak into a run.
    "TOLLGATE_MACHINE",
    "GITHUB_ACTIONS",
    "GITLAB_CI",
    "CIRCLECI",
    "BUILDKITE",
    "JENKINS_URL",
    "TF_BUILD",
    "TRAVIS",
    "BITBUCKET_BUILD_NUMBER",
    "TEAMCITY_VERSION",
    "DRONE",
    "WOODPECKER",
];

/// The day every command believes it is (see [`Cmd::new`]).
pub const TODAY: &str = "2026-01-01";

/// How long any one command may take before the test fails instead of hanging.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// The repository root: tests run the binary from there with relative paths,
/// so outputs (and snapshots) are the same on every machine.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `tollgate ARGS` from the repository root (no keys).
pub fn tollgate(args: &[&str]) -> Output {
    Cmd::new(&root(), args).output()
}

/// `tollgate ARGS` from `dir` (no keys).
pub fn tollgate_in(dir: &Path, args: &[&str]) -> Output {
    Cmd::new(dir, args).output()
}

/// One invocation of the binary: `tollgate --color never ARGS` in a folder,
/// with the caller's environment scrubbed (see the module invariants).
/// Await it (async tests, so the fake keeps being served), call
/// [`Cmd::output`] (sync tests), or take the command to spawn or snapshot.
pub struct Cmd {
    cmd: Command,
}

impl Cmd {
    pub fn new(dir: &Path, args: &[&str]) -> Cmd {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
        cmd.args(["--color", "never"]).args(args).current_dir(dir);
        for var in SCRUBBED.iter().chain(&KEY_VARS) {
            cmd.env_remove(var);
        }
        cmd.env("NO_COLOR", "1");
        // The day models' retirement dates are compared with: fixed, so an
        // output never changes with the day the tests run on. Months before
        // the first date in the catalog, so only the tests that set their
        // own day see a model retire.
        cmd.env("TOLLGATE_TEST_TODAY", TODAY);
        Cmd { cmd }
    }

    /// Gives the command the test key under every variable the team
    /// policies name.
    pub fn keys(self) -> Cmd {
        self.envs(&KEY_VARS.map(|k| (k, KEY)))
    }

    pub fn env(mut self, key: &str, value: &str) -> Cmd {
        self.cmd.env(key, value);
        self
    }

    pub fn envs(mut self, vars: &[(&str, &str)]) -> Cmd {
        for (k, v) in vars {
            self.cmd.env(k, v);
        }
        self
    }

    /// Runs to the end, blocking the thread: for tests without a fake.
    pub fn output(mut self) -> Output {
        self.cmd.output().expect("the tollgate binary runs")
    }

    /// The command itself, for `insta_cmd::assert_cmd_snapshot!` (which
    /// records its arguments and environment: never give it [`Cmd::keys`]).
    pub fn into_std(self) -> Command {
        self.cmd
    }

    /// The command run with a terminal as its stdin and stdout, through
    /// util-linux `script` (present wherever tollgate's CI runs; no crate
    /// needed): what the command writes to stdout comes out of the returned
    /// command's stdout, with the terminal's `\r\n` line ends. Its stderr
    /// goes to the file `stderr_to` (relative to its folder), so the
    /// terminal holds stdout alone; `None` leaves stderr on the terminal
    /// too, as a user sees both.
    pub fn in_terminal(self, stderr_to: Option<&str>) -> tokio::process::Command {
        let quote =
            |s: &std::ffi::OsStr| format!("'{}'", s.to_string_lossy().replace('\'', r"'\''"));
        let mut line = quote(self.cmd.get_program());
        for a in self.cmd.get_args() {
            line.push(' ');
            line.push_str(&quote(a));
        }
        if let Some(file) = stderr_to {
            line.push_str(&format!(" 2>{}", quote(std::ffi::OsStr::new(file))));
        }
        let mut cmd = tokio::process::Command::new("script");
        cmd.args([
            "--quiet",
            "--return",
            "--flush",
            "--command",
            &line,
            "/dev/null",
        ]);
        for (k, v) in self.cmd.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        if let Some(dir) = self.cmd.get_current_dir() {
            cmd.current_dir(dir);
        }
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// The command for tests that spawn, signal or kill the process; it is
    /// killed if the test drops it.
    pub fn into_tokio(self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::from(self.cmd);
        cmd.kill_on_drop(true);
        cmd
    }
}

impl IntoFuture for Cmd {
    type Output = Output;
    type IntoFuture = Pin<Box<dyn Future<Output = Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        let mut cmd = self.into_tokio();
        Box::pin(async move {
            tokio::time::timeout(COMMAND_TIMEOUT, cmd.output())
                .await
                .expect("the command finishes in time")
                .expect("the tollgate binary runs")
        })
    }
}

/// A temporary project: a folder with `.git` and whatever files the test
/// puts in it. By convention the workflow is `wf.yaml` and the policy
/// `policy.yaml`, which is what [`Project::run`] runs.
pub struct Project {
    dir: tempfile::TempDir,
    /// The shared ledger every command of the project uses
    /// (`TOLLGATE_STATE_URL`), when the test runs on PostgreSQL.
    ledger: Option<std::sync::Arc<pg::TestDb>>,
}

impl Project {
    /// An empty project.
    pub fn empty() -> Project {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join(".git")).expect("the project's .git");
        Project { dir, ledger: None }
    }

    /// The project's commands journal in `ledger`'s database (none: the
    /// project's own SQLite file).
    pub fn on(mut self, ledger: &Ledger) -> Project {
        self.ledger = ledger.db();
        self
    }

    /// Every row of the project's PostgreSQL journal as text (`None` on
    /// SQLite, whose files a test reads itself).
    pub fn ledger_text(&self) -> Option<String> {
        self.ledger.as_ref().map(|db| db.all_text())
    }

    /// The project's journal, as a test reads it.
    pub fn journal(&self) -> tollgate::journal::Journal {
        let clock = tollgate::journal::Clock::System;
        match &self.ledger {
            None => tollgate::journal::Journal::open(&self.path().join(".tollgate"), clock),
            Some(db) => tollgate::journal::Journal::open_postgres(&db.state_url(), clock),
        }
        .expect("the journal opens")
    }

    /// A project holding `policy.yaml` and `wf.yaml`.
    pub fn new(policy: &str, workflow: &str) -> Project {
        Project::empty()
            .with("policy.yaml", policy)
            .with("wf.yaml", workflow)
    }

    /// Adds a file (its folders are created).
    pub fn with(self, rel: &str, text: &str) -> Project {
        self.write(rel, text);
        self
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, rel: &str, text: &str) {
        let path = self.path().join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("the file's folder");
        }
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {rel}: {e}"));
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path().join(rel))
            .unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
    }

    pub fn exists(&self, rel: &str) -> bool {
        self.path().join(rel).exists()
    }

    /// `tollgate ARGS` in the project, without keys.
    pub fn tollgate(&self, args: &[&str]) -> Cmd {
        let cmd = Cmd::new(self.path(), args);
        match &self.ledger {
            Some(db) => cmd.env("TOLLGATE_STATE_URL", &db.url),
            None => cmd,
        }
    }

    /// `tollgate ARGS` in the project with exactly `env` (no keys unless
    /// given).
    pub fn tollgate_env(&self, args: &[&str], env: &[(&str, &str)]) -> Cmd {
        self.tollgate(args).envs(env)
    }

    /// `tollgate run wf.yaml --policy policy.yaml ARGS` with the test keys.
    pub fn run(&self, args: &[&str]) -> Cmd {
        self.run_env(args, &[]).keys()
    }

    /// `tollgate run wf.yaml --policy policy.yaml ARGS` with exactly `env`
    /// (no keys unless given).
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Cmd {
        let mut all = vec!["run", "wf.yaml", "--policy", "policy.yaml"];
        all.extend_from_slice(args);
        self.tollgate(&all).envs(env)
    }
}

/// A team-like policy on the fake: a local model (openai-compatible on
/// loopback), a budget OpenAI model, a workhorse on Anthropic and a flagship
/// on Gemini; `extra` is appended (fallbacks, budgets…).
pub fn policy(fake: &FakeServer, extra: &str) -> String {
    team_policy(&fake.base_url(), extra)
}

/// [`policy`] on any base URL.
pub fn team_policy(base: &str, extra: &str) -> String {
    format!(
        r#"version: 1
name: fake-team
sensitivity: {{ levels: [public, internal, confidential, secret], cloud_max: internal }}
providers:
  local:     {{ kind: openai-compatible, base_url: "{base}/v1" }}
  openai:    {{ kind: openai, base_url: "{base}/v1", api_key_env: TEST_OPENAI_KEY }}
  anthropic: {{ kind: anthropic, base_url: "{base}", api_key_env: TEST_ANTHROPIC_KEY }}
  gemini:    {{ kind: gemini, base_url: "{base}/v1beta", api_key_env: TEST_GEMINI_KEY }}
models:
  local:     {{ provider: local, model: local-llm, tier: local, context_window: 8192 }}
  budget:    {{ provider: openai, model: gpt-4.1-nano, tier: budget }}
  workhorse: {{ provider: anthropic, model: claude-sonnet-4-6, tier: workhorse }}
  flagship:  {{ provider: gemini, model: gemini-2.5-pro, tier: flagship }}
rules:
  - name: sensitive-stays-local
    when: {{ sensitivity: {{ above: internal }} }}
    use: local
  - name: hard
    when: {{ reasoning: deep }}
    use: flagship
  - name: volume
    when: {{ task: [summarize, classify] }}
    use: budget
  - name: rest
    use: workhorse
{extra}"#
    )
}

/// Exit code, stdout and stderr in one text, for failure messages and
/// snapshots of outputs that hold no key.
pub fn transcript(out: &Output) -> String {
    format!(
        "exit: {}\n--- stdout\n{}--- stderr\n{}",
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The JSON report a `--format json` run prints.
pub fn report(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", transcript(out)))
}

/// One step of a run report.
pub fn step<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["steps"]
        .as_array()
        .expect("the report lists its steps")
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no step {id}"))
}

/// Fails if [`KEY`] is in the output or in `extra` (a file's text).
pub fn assert_no_key(out: &Output, extra: &str) {
    let all = format!("{}{extra}", transcript(out));
    assert!(!all.contains(KEY), "the API key leaked into the output");
}

/// Settings that make a command's output the same on every run: the
/// temporary project folder, the repository, the fakes' ports, wall times,
/// run ids and request ids are replaced by placeholders. Bind them around
/// `assert_cmd_snapshot!` or [`assert_output_snapshot!`].
pub fn stable_output(project: &Path) -> insta::Settings {
    let mut settings = insta::Settings::clone_current();
    // A temp folder may be reached through a symlink (/tmp on macOS): both
    // spellings are the project.
    let canonical = project
        .canonicalize()
        .unwrap_or_else(|_| project.to_path_buf());
    for path in [canonical.as_path(), project] {
        settings.add_filter(&regex::escape(&path.display().to_string()), "[project]");
    }
    settings.add_filter(&regex::escape(&root().display().to_string()), "[repo]");
    settings.add_filter(r"127\.0\.0\.1:\d+", "[fake]");
    // Wall times as reports print them (`1.2s`, `35ms`, `93 ms`).
    settings.add_filter(r"\b\d+(\.\d+)? ?(ms|s)\b", "[time]");
    // Run ids are a time stamp and a random suffix.
    settings.add_filter(r"\b\d{8}-\d{6}-[0-9a-f]{4,}\b", "[run-id]");
    // The fake numbers its answers in the order it is asked, which parallel
    // steps do not fix.
    settings.add_filter(r"req_fake\d+", "req_fake[n]");
    settings
}

/// [`stable_output`] for outputs with tables that hold wall times: a time's
/// width moves the padding of its column, so runs of spaces become two.
pub fn stable_table_output(project: &Path) -> insta::Settings {
    let mut settings = stable_output(project);
    settings.add_filter(r" {2,}", "  ");
    settings
}

/// The text `insta_cmd::assert_cmd_snapshot!` would store for `out`, for
/// outputs that cannot go through that macro (keyed commands, or commands
/// awaited beside a fake). Refuses an output holding [`KEY`].
pub fn cmd_snapshot_text(out: &Output) -> String {
    let text = format!(
        "success: {:?}\nexit_code: {}\n----- stdout -----\n{}\n----- stderr -----\n{}",
        out.status.success(),
        out.status.code().unwrap_or(!0),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains(KEY), "a snapshot may not hold the key");
    text
}

/// Snapshots an output in `insta-cmd`'s layout (see [`cmd_snapshot_text`]);
/// a macro so the snapshot is named after the calling test module.
#[macro_export]
macro_rules! assert_output_snapshot {
    ($name:expr, $out:expr $(,)?) => {
        insta::assert_snapshot!($name, $crate::support::cmd_snapshot_text(&$out))
    };
}

/// The item number in a fan-out's request whose prompt holds `item-N`: for
/// answers and usage that differ per item, so a report filed under the
/// wrong item shows.
pub fn item_of(r: &fake_llm::Recorded) -> usize {
    let b = &r.raw_body;
    let at = b.find("item-").expect("an item in the prompt") + 5;
    b[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}
