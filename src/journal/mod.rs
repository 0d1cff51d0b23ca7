//! The run journal: one SQLite database (WAL mode) per project, by default
//! `.tollgate/state.db`, that makes runs durable and their spending visible.
//!
//! It holds every run (what ran, with which inputs, how it ended), every
//! step's estimate and outcome, and every call attempt (model, usage, cost,
//! latency, outcome) with the answer of each finished call. Three features
//! read it back:
//!
//! - **resume**: a finished call's answer is read back instead of being paid
//!   for again ([`Journal::finished_calls`]);
//! - **the response cache**: a request identical to one answered before is
//!   served from the journal ([`Journal::cached_answer`]);
//! - **budgets over time and `tollgate report`**: spending per UTC day and
//!   month ([`Journal::spent_since`], [`report`]).
//!
//! Every write is its own transaction, committed (and, with
//! `synchronous=FULL`, on disk) before the call that made it returns: the
//! executor writes a call's answer before the step's dependants can start, so
//! a crash at any point loses at most the calls that were in flight.
//!
//! The journal never holds API keys: requests are identified by a hash of
//! what was asked (model, messages, parameters), and keys live only in the
//! provider layer's headers.

pub mod report;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::provider::Usage;

/// The state folder's database file name.
pub const DB_FILE: &str = "state.db";

/// The schema version this build writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS runs (
    id              TEXT PRIMARY KEY,
    workflow        TEXT NOT NULL,
    workflow_path   TEXT NOT NULL,
    workflow_hash   TEXT NOT NULL,
    policy          TEXT NOT NULL,
    policy_path     TEXT NOT NULL,
    policy_hash     TEXT NOT NULL,
    inputs_hash     TEXT NOT NULL,
    inputs          TEXT NOT NULL,
    started_ms      INTEGER NOT NULL,
    finished_ms     INTEGER,
    status          TEXT NOT NULL,
    steps_total     INTEGER NOT NULL,
    estimate_usd    REAL NOT NULL,
    estimate_max_usd REAL NOT NULL,
    cost_usd        REAL NOT NULL DEFAULT 0,
    pid             INTEGER NOT NULL,
    -- The process's start time (clock ticks since boot): with the pid, an
    -- identity a recycled pid (or a container's fixed pid 1) cannot fake.
    pid_start       INTEGER,
    sessions        INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS runs_started ON runs(started_ms);
CREATE TABLE IF NOT EXISTS steps (
    run_id          TEXT NOT NULL REFERENCES runs(id),
    step            TEXT NOT NULL,
    status          TEXT NOT NULL,
    planned_model   TEXT,
    planned_calls   INTEGER NOT NULL,
    estimate_usd    REAL NOT NULL,
    estimate_max_usd REAL NOT NULL,
    flagship_estimate_usd REAL NOT NULL,
    finished_ms     INTEGER,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS calls (
    id              INTEGER PRIMARY KEY,
    run_id          TEXT NOT NULL REFERENCES runs(id),
    session         TEXT NOT NULL,
    step            TEXT NOT NULL,
    item            INTEGER,
    attempt         INTEGER NOT NULL,
    request_hash    TEXT,
    -- The rendered system prompt and prompt (hashed): a resume reuses this
    -- call's answer only for the same prompt (upstream answers may differ).
    prompt_hash     TEXT,
    model           TEXT NOT NULL,
    provider        TEXT NOT NULL,
    provider_model  TEXT NOT NULL,
    tier            TEXT NOT NULL,
    local           INTEGER NOT NULL,
    started_ms      INTEGER NOT NULL,
    finished_ms     INTEGER NOT NULL,
    latency_ms      INTEGER NOT NULL,
    outcome         TEXT NOT NULL,
    error           TEXT,
    input_tokens    INTEGER NOT NULL DEFAULT 0,
    output_tokens   INTEGER NOT NULL DEFAULT 0,
    cached_tokens   INTEGER NOT NULL DEFAULT 0,
    cache_write_tokens INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens INTEGER NOT NULL DEFAULT 0,
    cache_write_1h_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd        REAL NOT NULL DEFAULT 0,
    list_cost_usd   REAL NOT NULL DEFAULT 0,
    flagship_cost_usd REAL NOT NULL DEFAULT 0,
    estimate_usd    REAL NOT NULL DEFAULT 0,
    saved_usd       REAL NOT NULL DEFAULT 0,
    batch           INTEGER NOT NULL DEFAULT 0,
    from_cache      INTEGER NOT NULL DEFAULT 0,
    cacheable       INTEGER NOT NULL DEFAULT 0,
    response        TEXT,
    output          TEXT,
    -- Why the answer's usage or cost was not taken as-is (cost::charge).
    usage_flag      TEXT
);
CREATE INDEX IF NOT EXISTS calls_run ON calls(run_id, step, item);
CREATE INDEX IF NOT EXISTS calls_request ON calls(request_hash, finished_ms);
CREATE INDEX IF NOT EXISTS calls_finished ON calls(finished_ms);
CREATE TABLE IF NOT EXISTS holds (
    id              INTEGER PRIMARY KEY,
    session         TEXT NOT NULL,
    pid             INTEGER NOT NULL,
    pid_start       INTEGER,
    amount_usd      REAL NOT NULL,
    created_ms      INTEGER NOT NULL
);
-- Provider batches submitted and not yet fetched (see run::BatchLedger):
-- an interrupted run resumes polling them instead of paying twice.
CREATE TABLE IF NOT EXISTS batches (
    key             TEXT PRIMARY KEY,
    provider        TEXT NOT NULL,
    batch_id        TEXT NOT NULL,
    submitted_ms    INTEGER NOT NULL,
    finished_ms     INTEGER
);
"#;

/// A hold older than this is a leftover, whatever its process says (a
/// recycled pid must not block budgets forever).
const STALE_HOLD_MS: Millis = 24 * 3600 * 1000;

/// Where the journal lives: `--state DIR`, else `$TOLLGATE_STATE`, else
/// `.tollgate/` in the project (the nearest folder from the current one up
/// that holds `.git`; the current folder when there is none).
pub fn state_dir(flag: Option<&Path>) -> PathBuf {
    if let Some(dir) = flag {
        return dir.to_path_buf();
    }
    if let Some(dir) = std::env::var_os("TOLLGATE_STATE").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let root = cwd
        .ancestors()
        .find(|d| d.join(".git").exists())
        .unwrap_or(&cwd);
    root.join(".tollgate")
}

/// Milliseconds since the Unix epoch, from the journal's clock.
pub type Millis = i64;

/// The time every journal record is stamped with. The system clock, except
/// in tests, which fix it (`TOLLGATE_TEST_NOW`) so budgets, the cache's TTL
/// and reports are deterministic.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    System,
    Fixed(Millis),
}

impl Clock {
    /// The system clock, unless `TOLLGATE_TEST_NOW` holds an RFC 3339 time.
    pub fn from_env() -> Result<Clock, String> {
        match std::env::var("TOLLGATE_TEST_NOW") {
            Ok(v) if !v.is_empty() => {
                let t: jiff::Timestamp = v
                    .parse()
                    .map_err(|e| format!("TOLLGATE_TEST_NOW={v}: not an RFC 3339 time: {e}"))?;
                Ok(Clock::Fixed(t.as_millisecond()))
            }
            _ => Ok(Clock::System),
        }
    }

    pub fn now(self) -> Millis {
        match self {
            Clock::Fixed(ms) => ms,
            Clock::System => jiff::Timestamp::now().as_millisecond(),
        }
    }
}

/// The start of the UTC day and of the UTC month holding `ms`.
pub fn period_starts(ms: Millis) -> (Millis, Millis) {
    let t = jiff::Timestamp::from_millisecond(ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let date = jiff::tz::TimeZone::UTC.to_datetime(t).date();
    (utc_midnight(date), utc_midnight(date.first_of_month()))
}

fn utc_midnight(d: jiff::civil::Date) -> Millis {
    jiff::tz::TimeZone::UTC
        .to_timestamp(d.to_datetime(jiff::civil::Time::midnight()))
        .map_or(0, |t| t.as_millisecond())
}

/// `2026-11-26 10:45` (UTC).
pub fn format_time(ms: Millis) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_default()
}

/// `2026-11-26` (UTC).
pub fn format_day(ms: Millis) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

/// Parses `--since`: a duration back from now (`7d`, `12h`) or a UTC date
/// (`2026-11-01`) or an RFC 3339 time.
pub fn parse_since(text: &str, now: Millis) -> Result<Millis, String> {
    if let Some(d) = crate::workflow::parse_duration(&Value::String(text.to_owned())) {
        return Ok(now - d.as_millis() as i64);
    }
    if let Ok(date) = text.parse::<jiff::civil::Date>() {
        return Ok(utc_midnight(date));
    }
    if let Ok(t) = text.parse::<jiff::Timestamp>() {
        return Ok(t.as_millisecond());
    }
    Err(format!(
        "--since {text}: use a duration back from now (7d, 12h) or a date (2026-11-01)"
    ))
}

/// A hash of anything serialisable, as hex (for request and file identities).
/// The identity of a workflow for `--resume`: its file and every prompt it
/// renders (prompt files included). Answers to one version of a prompt must
/// not be mixed with calls made for another.
pub fn fingerprint(analysis: &crate::analyze::Analysis) -> String {
    let prompts: Vec<[Option<&str>; 2]> = analysis
        .steps
        .values()
        .map(|s| {
            [
                Some(s.prompt.text.as_str()),
                s.system.as_ref().map(|x| x.text.as_str()),
            ]
        })
        .collect();
    sha256_json(&serde_json::json!({
        "workflow": &*analysis.doc().file.text,
        "prompts": prompts,
    }))
}

/// The identity of a policy file (its text).
pub fn policy_hash(path: &Path) -> String {
    // Through the bounded reader: the path is the user's, read a second time.
    let text = crate::files::read_text(path).unwrap_or_default();
    sha256_json(&text)
}

/// A path as written in the journal: absolute where it exists.
fn absolute(p: &Path) -> String {
    std::fs::canonicalize(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}

/// The journal's record of a run about to start.
pub fn new_run(
    analysis: &crate::analyze::Analysis,
    workflow_path: &Path,
    policy: &crate::policy::Policy,
    policy_path: &Path,
    inputs: &crate::inputs::Inputs,
    plan: &crate::plan::Plan,
) -> NewRun {
    NewRun {
        workflow: analysis.workflow.value.name.clone(),
        workflow_path: absolute(workflow_path),
        workflow_hash: fingerprint(analysis),
        policy: policy.name.clone(),
        policy_path: absolute(policy_path),
        policy_hash: policy_hash(policy_path),
        inputs: Value::Object(
            inputs
                .iter()
                .map(|(k, v)| (k.clone(), v.value.clone()))
                .collect(),
        ),
        estimate_usd: plan.totals.cost.low,
        estimate_max_usd: plan.totals.cost.high,
        steps: plan
            .steps
            .iter()
            .map(|s| PlannedStep {
                id: s.id.clone(),
                model: s.model.as_ref().map(|m| m.alias.clone()),
                calls: s.calls,
                estimate_usd: s.cost.low,
                estimate_max_usd: s.cost.high,
                flagship_estimate_usd: s.flagship_cost.low,
            })
            .collect(),
    }
}

/// Identifies what a call of a step was asked: its rendered system prompt
/// and prompt. The model is left out — a resumed call may be routed to
/// another model of the chain, and its journaled answer still stands.
pub fn prompt_hash(system: Option<&str>, prompt: &str) -> String {
    sha256_json(&serde_json::json!([system, prompt]))
}

pub fn sha256_json(v: &impl Serialize) -> String {
    let bytes = serde_json::to_vec(v).unwrap_or_default();
    format!("{:x}", Sha256::digest(&bytes))
}

/// What is known about a run when it starts.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub workflow: String,
    pub workflow_path: String,
    /// Identity of the workflow and its prompt files: a resume refuses to
    /// mix answers to different prompts.
    pub workflow_hash: String,
    pub policy: String,
    pub policy_path: String,
    pub policy_hash: String,
    /// The resolved inputs (a resume reads them back, so `@-` works too).
    pub inputs: Value,
    pub estimate_usd: f64,
    pub estimate_max_usd: f64,
    pub steps: Vec<PlannedStep>,
}

#[derive(Debug, Clone)]
pub struct PlannedStep {
    pub id: String,
    pub model: Option<String>,
    pub calls: u64,
    pub estimate_usd: f64,
    pub estimate_max_usd: f64,
    pub flagship_estimate_usd: f64,
}

/// A run as the journal has it.
#[derive(Debug, Clone, Serialize)]
pub struct RunRow {
    pub id: String,
    pub workflow: String,
    pub workflow_path: String,
    #[serde(skip)]
    pub workflow_hash: String,
    pub policy: String,
    pub policy_path: String,
    #[serde(skip)]
    pub policy_hash: String,
    #[serde(skip)]
    pub inputs: Value,
    pub started: String,
    pub started_ms: Millis,
    pub finished_ms: Option<Millis>,
    /// `running`, `succeeded`, `failed`, `cancelled`, `timed_out`, or
    /// `interrupted` (journaled as running, but its process is gone).
    pub status: String,
    pub steps_done: u64,
    pub steps_total: u64,
    pub cost_usd: f64,
    pub estimate_usd: f64,
    #[serde(skip)]
    pub pid: u32,
    pub sessions: u32,
}

/// One attempt of one call, as it is written.
#[derive(Debug, Clone, Default)]
pub struct CallRecord {
    pub step: String,
    pub item: Option<usize>,
    pub attempt: u32,
    pub request_hash: Option<String>,
    /// See [`prompt_hash`].
    pub prompt_hash: Option<String>,
    pub model: String,
    pub provider: String,
    pub provider_model: String,
    pub tier: String,
    pub local: bool,
    pub started_ms: Millis,
    pub latency_ms: u64,
    /// `ok`, `cached`, `invalid_output`, `truncated`, `over_budget`, or a
    /// provider error kind.
    pub outcome: String,
    pub error: Option<String>,
    pub usage: Usage,
    pub cost_usd: f64,
    /// The same usage at the model's standard (non-batch) prices.
    pub list_cost_usd: f64,
    /// The same usage on the policy's flagship model.
    pub flagship_cost_usd: f64,
    /// The plan's expected cost of this call.
    pub estimate_usd: f64,
    /// A cache hit: what the answer cost when it was first bought.
    pub saved_usd: f64,
    /// Sent through a provider's batch API (at its batch price).
    pub batch: bool,
    pub from_cache: bool,
    /// May answer identical requests later: a whole, valid answer.
    pub cacheable: bool,
    /// The raw answer text (what the cache serves).
    pub response: Option<String>,
    /// The call's final output; set only when this attempt finished it.
    pub output: Option<Value>,
    /// Why the answer's usage or cost was not taken as-is (see
    /// [`crate::cost::charge`]); `tollgate report` counts these calls.
    pub usage_flag: Option<String>,
}

/// A call a run already finished.
#[derive(Debug, Clone)]
pub struct FinishedCall {
    /// What the call was asked (see [`prompt_hash`]); `None` in rows of
    /// older builds.
    pub prompt_hash: Option<String>,
    pub model: String,
    pub output: Value,
    pub usage: Usage,
    pub cost_usd: f64,
}

/// A cached answer to an identical request.
#[derive(Debug, Clone)]
pub struct CachedAnswer {
    pub text: String,
    pub usage: Usage,
    /// What the answer cost when it was bought.
    pub cost_usd: f64,
    pub run_id: String,
}

/// Why a journal operation failed, in words for the user.
pub type JournalError = String;

fn db_err(e: rusqlite::Error) -> JournalError {
    format!("run journal: {e}")
}

/// The open journal. Cheap to share (`Arc`); calls are serialised on one
/// connection, each its own short transaction.
pub struct Journal {
    path: PathBuf,
    conn: Mutex<Connection>,
    clock: Clock,
    /// This process's id for its writes: spending "by others" (other
    /// processes, earlier sessions of a resumed run) is counted from the
    /// journal, this session's from the executor's own ledger.
    session: String,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("path", &self.path)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl Journal {
    /// Opens (creating when needed) `DIR/state.db`.
    pub fn open(dir: &Path, clock: Clock) -> Result<Journal, JournalError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the state folder {}: {e}", dir.display()))?;
        let path = dir.join(DB_FILE);
        let conn = Connection::open(&path)
            .map_err(|e| format!("cannot open the run journal {}: {e}", path.display()))?;
        // It holds inputs and answers, which may be confidential: readable
        // by its owner only (SQLite gives the -wal and -shm files the same
        // mode).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        }
        Self::init(conn, path, clock)
    }

    /// Opens `DIR/state.db` only if it exists (for commands that only read).
    pub fn open_existing(dir: &Path, clock: Clock) -> Result<Option<Journal>, JournalError> {
        if !dir.join(DB_FILE).exists() {
            return Ok(None);
        }
        Self::open(dir, clock).map(Some)
    }

    /// An in-memory journal (tests, benchmarks).
    pub fn in_memory(clock: Clock) -> Result<Journal, JournalError> {
        let conn = Connection::open_in_memory().map_err(db_err)?;
        Self::init(conn, PathBuf::from(":memory:"), clock)
    }

    fn init(conn: Connection, path: PathBuf, clock: Clock) -> Result<Journal, JournalError> {
        // WAL: readers (report, another run's budget check) never block the
        // writer. FULL: a committed call survives a power cut too, not only
        // a crash of the process; one fsync per call is small beside a model
        // call. busy_timeout: two runs at once wait for each other's
        // short transactions instead of failing.
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(db_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(db_err)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(db_err)?;
        if version > SCHEMA_VERSION {
            return Err(format!(
                "the run journal {} was written by a newer tollgate (schema {version}, this one knows {SCHEMA_VERSION})",
                path.display()
            ));
        }
        conn.execute_batch(SCHEMA).map_err(db_err)?;
        // Columns added to schema 1 after its first journals were written
        // (`CREATE TABLE IF NOT EXISTS` does not add them).
        for (table, column, kind) in [
            ("runs", "pid_start", "INTEGER"),
            ("holds", "pid_start", "INTEGER"),
            (
                "calls",
                "cache_write_1h_tokens",
                "INTEGER NOT NULL DEFAULT 0",
            ),
            ("calls", "usage_flag", "TEXT"),
        ] {
            let present: bool = conn
                .query_row(
                    &format!("SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE name = ?1"),
                    [column],
                    |r| r.get::<_, i64>(0),
                )
                .map_err(db_err)?
                > 0;
            if !present {
                conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))
                    .map_err(db_err)?;
            }
        }
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(db_err)?;
        let session = format!("{}-{:08x}", std::process::id(), fastrand::u32(..));
        Ok(Journal {
            path,
            conn: Mutex::new(conn),
            clock,
            session,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn now(&self) -> Millis {
        self.clock.now()
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a new run (status `running`) and returns its id:
    /// `r-YYYYMMDD-HHMMSS-xxxx` (UTC), short enough to type.
    pub fn begin_run(&self, run: &NewRun) -> Result<String, JournalError> {
        let now = self.now();
        let stamp = jiff::Timestamp::from_millisecond(now)
            .map(|t| t.strftime("%Y%m%d-%H%M%S").to_string())
            .unwrap_or_default();
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db_err)?;
        let id = loop {
            let id = format!("r-{stamp}-{:04x}", fastrand::u16(..));
            let taken: bool = tx
                .query_row("SELECT 1 FROM runs WHERE id = ?1", [&id], |_| Ok(true))
                .optional()
                .map_err(db_err)?
                .unwrap_or(false);
            if !taken {
                break id;
            }
        };
        tx.execute(
            "INSERT INTO runs (id, workflow, workflow_path, workflow_hash, policy, policy_path, policy_hash,
                inputs_hash, inputs, started_ms, status, steps_total, estimate_usd, estimate_max_usd, pid,
                pid_start)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'running', ?11, ?12, ?13, ?14, ?15)",
            params![
                id,
                run.workflow,
                run.workflow_path,
                run.workflow_hash,
                run.policy,
                run.policy_path,
                run.policy_hash,
                sha256_json(&run.inputs),
                run.inputs.to_string(),
                now,
                run.steps.len() as i64,
                run.estimate_usd,
                run.estimate_max_usd,
                std::process::id(),
                own_start(),
            ],
        )
        .map_err(db_err)?;
        for s in &run.steps {
            tx.execute(
                "INSERT INTO steps (run_id, step, status, planned_model, planned_calls, estimate_usd,
                    estimate_max_usd, flagship_estimate_usd)
                 VALUES (?1, ?2, 'pending', ?3, ?4, ?5, ?6, ?7)",
                params![
                    id,
                    s.id,
                    s.model,
                    s.calls as i64,
                    s.estimate_usd,
                    s.estimate_max_usd,
                    s.flagship_estimate_usd
                ],
            )
            .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(id)
    }

    /// Marks a journaled run as running again in this process — only if it
    /// is still as `seen` (not running, or running in the dead process
    /// `seen.pid`): two resumes of one run at once would pay twice.
    pub fn reopen_run(&self, seen: &RunRow) -> Result<(), JournalError> {
        let changed = self
            .conn()
            .execute(
                "UPDATE runs SET status = 'running', finished_ms = NULL, pid = ?2, pid_start = ?4,
                    sessions = sessions + 1
                 WHERE id = ?1 AND (status != 'running' OR pid = ?3)",
                params![seen.id, std::process::id(), seen.pid, own_start()],
            )
            .map_err(db_err)?;
        if changed == 0 {
            return Err(format!(
                "run {} was resumed by another process just now",
                seen.id
            ));
        }
        Ok(())
    }

    /// Records how a run ended; its cost is every call of every session.
    pub fn finish_run(&self, id: &str, status: &str) -> Result<(), JournalError> {
        self.conn()
            .execute(
                "UPDATE runs SET status = ?2, finished_ms = ?3,
                    cost_usd = (SELECT COALESCE(SUM(MAX(cost_usd, 0)), 0) FROM calls WHERE run_id = ?1)
                 WHERE id = ?1",
                params![id, status, self.now()],
            )
            .map_err(db_err)?;
        Ok(())
    }

    /// Records how a step ended.
    pub fn finish_step(&self, run_id: &str, step: &str, status: &str) -> Result<(), JournalError> {
        self.conn()
            .execute(
                "UPDATE steps SET status = ?3, finished_ms = ?4 WHERE run_id = ?1 AND step = ?2",
                params![run_id, step, status, self.now()],
            )
            .map_err(db_err)?;
        Ok(())
    }

    /// Writes one call attempt, committed before this returns.
    pub fn record_call(&self, run_id: &str, c: &CallRecord) -> Result<(), JournalError> {
        let output = c.output.as_ref().map(Value::to_string);
        self.conn()
            .execute(
                "INSERT INTO calls (run_id, session, step, item, attempt, request_hash, model, provider,
                    provider_model, tier, local, started_ms, finished_ms, latency_ms, outcome, error,
                    input_tokens, output_tokens, cached_tokens, cache_write_tokens, reasoning_tokens,
                    cache_write_1h_tokens, cost_usd, list_cost_usd, flagship_cost_usd, estimate_usd,
                    saved_usd, batch, from_cache, cacheable, response, output, prompt_hash, usage_flag)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                    ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32, ?33, ?34)",
                params![
                    run_id,
                    self.session,
                    c.step,
                    c.item.map(|i| i as i64),
                    c.attempt,
                    c.request_hash,
                    c.model,
                    c.provider,
                    c.provider_model,
                    c.tier,
                    c.local,
                    c.started_ms,
                    self.now(),
                    c.latency_ms as i64,
                    c.outcome,
                    c.error,
                    c.usage.input_tokens as i64,
                    c.usage.output_tokens as i64,
                    c.usage.cached_input_tokens as i64,
                    c.usage.cache_write_tokens as i64,
                    c.usage.reasoning_tokens as i64,
                    c.usage.cache_write_1h_tokens as i64,
                    c.cost_usd,
                    c.list_cost_usd,
                    c.flagship_cost_usd,
                    c.estimate_usd,
                    c.saved_usd,
                    c.batch,
                    c.from_cache,
                    c.cacheable,
                    c.response,
                    output,
                    c.prompt_hash,
                    c.usage_flag,
                ],
            )
            .map_err(db_err)?;
        Ok(())
    }

    /// Every call of a run that finished with an answer, by (step, item).
    pub fn finished_calls(
        &self,
        run_id: &str,
    ) -> Result<std::collections::HashMap<(String, Option<usize>), FinishedCall>, JournalError>
    {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT step, item, model, output, input_tokens, output_tokens, cached_tokens,
                    cache_write_tokens, reasoning_tokens, cache_write_1h_tokens, cost_usd, prompt_hash
                 FROM calls WHERE run_id = ?1 AND output IS NOT NULL ORDER BY id",
            )
            .map_err(db_err)?;
        let rows = stmt
            .query_map([run_id], |r| {
                let item: Option<i64> = r.get(1)?;
                let output: String = r.get(3)?;
                Ok((
                    (r.get::<_, String>(0)?, item.map(|i| i as usize)),
                    FinishedCall {
                        prompt_hash: r.get(11)?,
                        model: r.get(2)?,
                        output: serde_json::from_str(&output).unwrap_or(Value::Null),
                        usage: usage_from(r, 4)?,
                        cost_usd: r.get(10)?,
                    },
                ))
            })
            .map_err(db_err)?;
        rows.collect::<Result<_, _>>().map_err(db_err)
    }

    /// The newest whole, valid answer to an identical request bought at or
    /// after `not_before` (cache hits are not themselves sources: the TTL
    /// counts from when the answer was bought).
    pub fn cached_answer(
        &self,
        request_hash: &str,
        not_before: Millis,
    ) -> Result<Option<CachedAnswer>, JournalError> {
        self.conn()
            .query_row(
                "SELECT response, input_tokens, output_tokens, cached_tokens, cache_write_tokens,
                    reasoning_tokens, cache_write_1h_tokens, cost_usd, run_id
                 FROM calls
                 WHERE request_hash = ?1 AND cacheable = 1 AND from_cache = 0 AND finished_ms >= ?2
                 ORDER BY finished_ms DESC, id DESC LIMIT 1",
                params![request_hash, not_before],
                |r| {
                    Ok(CachedAnswer {
                        text: r.get(0)?,
                        usage: usage_from(r, 1)?,
                        cost_usd: r.get(7)?,
                        run_id: r.get(8)?,
                    })
                },
            )
            .optional()
            .map_err(db_err)
    }

    /// Budgets over time, across processes: in one write transaction (so
    /// two processes cannot interleave), counts what others spent since each
    /// check's start and the worst cases of their calls in flight (holds of
    /// live processes), and holds `amount` if it fits every check. Returns
    /// the hold, or the first check that does not fit with what others
    /// spent and hold.
    pub fn try_hold(
        &self,
        amount: f64,
        checks: &[(Millis, f64, f64)],
    ) -> Result<Result<i64, (usize, f64, f64)>, JournalError> {
        let now = self.now();
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let holds: Vec<(i64, u32, Option<i64>, f64, Millis)> = {
            let mut stmt = tx
                .prepare(
                    "SELECT id, pid, pid_start, amount_usd, created_ms FROM holds WHERE session != ?1",
                )
                .map_err(db_err)?;
            stmt.query_map([&self.session], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .map_err(db_err)?
            .collect::<Result<_, _>>()
            .map_err(db_err)?
        };
        let mut in_flight = 0.0;
        for (id, pid, pid_start, held, created) in holds {
            if process_alive_since(pid, pid_start) && now - created < STALE_HOLD_MS {
                in_flight += held;
            } else {
                // Left by a process that died mid-call.
                tx.execute("DELETE FROM holds WHERE id = ?1", [id])
                    .map_err(db_err)?;
            }
        }
        for (index, &(since, limit, local)) in checks.iter().enumerate() {
            let spent: f64 = tx
                .query_row(
                    "SELECT COALESCE(SUM(MAX(cost_usd, 0)), 0) FROM calls WHERE finished_ms >= ?1 AND session != ?2",
                    params![since, self.session],
                    |r| r.get(0),
                )
                .map_err(db_err)?;
            if spent + in_flight + local + amount > limit + 1e-12 {
                tx.commit().map_err(db_err)?;
                return Ok(Err((index, spent, in_flight)));
            }
        }
        tx.execute(
            "INSERT INTO holds (session, pid, pid_start, amount_usd, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![self.session, std::process::id(), own_start(), amount, now],
        )
        .map_err(db_err)?;
        let id = tx.last_insert_rowid();
        tx.commit().map_err(db_err)?;
        Ok(Ok(id))
    }

    /// Ends a hold: its call settled and its cost is journaled.
    pub fn release_hold(&self, id: i64) -> Result<(), JournalError> {
        self.conn()
            .execute("DELETE FROM holds WHERE id = ?1", [id])
            .map_err(db_err)?;
        Ok(())
    }

    /// Money spent since `since`, by everyone.
    pub fn spent_since(&self, since: Millis) -> Result<f64, JournalError> {
        self.conn()
            .query_row(
                "SELECT COALESCE(SUM(MAX(cost_usd, 0)), 0) FROM calls WHERE finished_ms >= ?1",
                [since],
                |r| r.get(0),
            )
            .map_err(db_err)
    }

    /// Money a run spent, over all its sessions.
    pub fn run_cost(&self, run_id: &str) -> Result<f64, JournalError> {
        self.conn()
            .query_row(
                "SELECT COALESCE(SUM(MAX(cost_usd, 0)), 0) FROM calls WHERE run_id = ?1",
                [run_id],
                |r| r.get(0),
            )
            .map_err(db_err)
    }

    /// One run; `last` is the newest.
    pub fn run(&self, id: &str) -> Result<Option<RunRow>, JournalError> {
        let sql = format!(
            "{RUN_SELECT} WHERE {} ORDER BY r.started_ms DESC, r.rowid DESC LIMIT 1",
            if id == "last" { "1 = 1" } else { "r.id = ?1" }
        );
        let conn = self.conn();
        let mut stmt = conn.prepare(&sql).map_err(db_err)?;
        let row = if id == "last" {
            stmt.query_row([], run_row).optional()
        } else {
            stmt.query_row([id], run_row).optional()
        };
        row.map_err(db_err)
    }

    /// The newest runs first.
    pub fn runs(&self, limit: usize) -> Result<Vec<RunRow>, JournalError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!(
                "{RUN_SELECT} ORDER BY r.started_ms DESC, r.rowid DESC LIMIT ?1"
            ))
            .map_err(db_err)?;
        let rows = stmt
            .query_map([limit as i64], run_row)
            .map_err(db_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err)?;
        Ok(rows)
    }
}

const RUN_SELECT: &str =
    "SELECT r.id, r.workflow, r.workflow_path, r.workflow_hash, r.policy, r.policy_path,
    r.policy_hash, r.inputs, r.started_ms, r.finished_ms, r.status, r.steps_total,
    (SELECT COUNT(*) FROM steps s WHERE s.run_id = r.id AND s.status IN ('succeeded', 'skipped')),
    (SELECT COALESCE(SUM(MAX(cost_usd, 0)), 0) FROM calls c WHERE c.run_id = r.id),
    r.estimate_usd, r.pid, r.sessions, r.pid_start
    FROM runs r";

fn run_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
    let started_ms: Millis = r.get(8)?;
    let mut status: String = r.get(10)?;
    let pid: u32 = r.get(15)?;
    if status == "running" && !process_alive_since(pid, r.get(17)?) {
        status = "interrupted".to_owned();
    }
    let inputs: String = r.get(7)?;
    Ok(RunRow {
        id: r.get(0)?,
        workflow: r.get(1)?,
        workflow_path: r.get(2)?,
        workflow_hash: r.get(3)?,
        policy: r.get(4)?,
        policy_path: r.get(5)?,
        policy_hash: r.get(6)?,
        inputs: serde_json::from_str(&inputs).unwrap_or(Value::Null),
        started: format_time(started_ms),
        started_ms,
        finished_ms: r.get(9)?,
        status,
        steps_total: r.get::<_, i64>(11)? as u64,
        steps_done: r.get::<_, i64>(12)? as u64,
        cost_usd: r.get(13)?,
        estimate_usd: r.get(14)?,
        pid,
        sessions: r.get(16)?,
    })
}

/// Six usage columns in `Usage` field order, from `first` on.
fn usage_from(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Usage> {
    let n = |i: usize| -> rusqlite::Result<u64> { Ok(r.get::<_, i64>(first + i)?.max(0) as u64) };
    Ok(Usage {
        input_tokens: n(0)?,
        output_tokens: n(1)?,
        cached_input_tokens: n(2)?,
        cache_write_tokens: n(3)?,
        reasoning_tokens: n(4)?,
        cache_write_1h_tokens: n(5)?,
    })
}

/// Is process `pid` still the one that started at `start` (clock ticks since
/// boot, from `/proc`)? A pid reused by another process — or the same small
/// pid of a fresh container — is not: it started at another time. Without
/// a start time (not Linux, an old row) only the pid is asked about.
pub fn process_alive_since(pid: u32, start: Option<i64>) -> bool {
    match (start, process_start(pid)) {
        (Some(want), Some(now)) if want != now => false,
        _ => process_alive(pid),
    }
}

/// When a process started, in clock ticks since boot (`/proc/<pid>/stat`,
/// field 22); `None` where there is no `/proc`.
pub fn process_start(pid: u32) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces and parens):
    // state is field 3, so starttime (22) is the 20th after the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// This process's start time, read once.
pub fn own_start() -> Option<i64> {
    static START: std::sync::OnceLock<Option<i64>> = std::sync::OnceLock::new();
    *START.get_or_init(|| process_start(std::process::id()))
}

/// Is the process that journaled a run as `running` still there? Read from
/// `/proc` where there is one, else asked with `kill -0`; where neither
/// answers it is assumed gone (a resume then goes ahead).
pub fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let proc_root = Path::new("/proc");
    if proc_root.join("self").exists() {
        // A zombie (killed, not yet reaped by its parent) is gone for our
        // purposes.
        return match std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")) {
            Ok(stat) => !stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
            Err(_) => false,
        };
    }
    std::process::Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Submitted batches live in the journal, beside the calls they answer, so
/// concurrent runs in one project see each other's and a crash between
/// submitting and fetching never loses a paid batch.
impl crate::run::BatchLedger for Journal {
    fn submitted(&self, key: &str) -> Option<crate::run::BatchRef> {
        self.conn()
            .query_row(
                "SELECT provider, batch_id FROM batches WHERE key = ?1 AND finished_ms IS NULL",
                [key],
                |r| {
                    Ok(crate::run::BatchRef {
                        provider: r.get(0)?,
                        id: r.get(1)?,
                    })
                },
            )
            .optional()
            .ok()
            .flatten()
    }

    fn record(&self, key: &str, batch: &crate::run::BatchRef) -> std::io::Result<()> {
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO batches (key, provider, batch_id, submitted_ms, finished_ms)
                 VALUES (?1, ?2, ?3, ?4, NULL)",
                params![key, batch.provider, batch.id, self.now()],
            )
            .map(|_| ())
            .map_err(std::io::Error::other)
    }

    fn finished(&self, key: &str) -> std::io::Result<()> {
        self.conn()
            .execute(
                "UPDATE batches SET finished_ms = ?2 WHERE key = ?1",
                params![key, self.now()],
            )
            .map(|_| ())
            .map_err(std::io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_with_another_start_time_is_another_process() {
        let me = std::process::id();
        if let Some(start) = own_start() {
            assert!(process_alive_since(me, Some(start)));
            // The same pid, started at another time: a recycled pid, or the
            // fixed pid of a fresh container — not the process written down.
            assert!(!process_alive_since(me, Some(start + 1)));
        }
        assert!(process_alive_since(me, None));
    }

    fn new_run() -> NewRun {
        NewRun {
            workflow: "wf".into(),
            workflow_path: "wf.yaml".into(),
            workflow_hash: "h".into(),
            policy: "p".into(),
            policy_path: "p.yaml".into(),
            policy_hash: "ph".into(),
            inputs: serde_json::json!({"ticket": "x"}),
            estimate_usd: 0.01,
            estimate_max_usd: 0.02,
            steps: vec![PlannedStep {
                id: "a".into(),
                model: Some("m".into()),
                calls: 2,
                estimate_usd: 0.01,
                estimate_max_usd: 0.02,
                flagship_estimate_usd: 0.1,
            }],
        }
    }

    /// A journal written before `usage_flag` existed gains the column, and
    /// flagged calls are counted by the report; a negative cost an older
    /// build journaled never counts as money freed.
    #[test]
    fn usage_flags_are_journaled_and_old_journals_migrate() {
        let dir = tempfile::tempdir().unwrap();
        let clock = || Clock::Fixed(1_700_000_000_000);
        {
            let j = Journal::open(dir.path(), clock()).unwrap();
            let id = j.begin_run(&new_run()).unwrap();
            // An older build's row: no flag column, a negative cost.
            j.conn()
                .execute_batch("ALTER TABLE calls DROP COLUMN usage_flag")
                .unwrap();
            j.conn()
                .execute(
                    "INSERT INTO calls (run_id, session, step, attempt, model, provider, provider_model,
                        tier, local, started_ms, finished_ms, latency_ms, outcome, cost_usd)
                     VALUES (?1, 'old', 'a', 1, 'm', 'p', 'pm', 'budget', 0, 0, 1700000000000, 0, 'ok', -1.0)",
                    [&id],
                )
                .unwrap();
        }
        let j = Journal::open(dir.path(), clock()).unwrap();
        let id = j.begin_run(&new_run()).unwrap();
        let call = |flag: Option<&str>| CallRecord {
            step: "a".into(),
            model: "m".into(),
            tier: "budget".into(),
            outcome: "ok".into(),
            cost_usd: 0.25,
            usage_flag: flag.map(str::to_owned),
            ..CallRecord::default()
        };
        j.record_call(
            &id,
            &call(Some("untrusted: 9 output tokens reported for a limit of 1")),
        )
        .unwrap();
        j.record_call(&id, &call(Some("above reserve: charged more")))
            .unwrap();
        j.record_call(&id, &call(None)).unwrap();
        assert!((j.spent_since(0).unwrap() - 0.75).abs() < 1e-12);
        let r = report::build(&j, None).unwrap();
        assert_eq!(
            (r.totals.untrusted_calls, r.totals.above_reserve_calls),
            (1, 1)
        );
        assert!(
            (r.totals.cost_usd - 0.75).abs() < 1e-12,
            "{}",
            r.totals.cost_usd
        );
    }

    #[test]
    fn finished_calls_and_cache_round_trip() {
        let j = Journal::in_memory(Clock::Fixed(1_700_000_000_000)).unwrap();
        let id = j.begin_run(&new_run()).unwrap();
        assert!(id.starts_with("r-20231114-221320-"), "{id}");
        let mut c = CallRecord {
            step: "a".into(),
            item: Some(1),
            request_hash: Some("req".into()),
            model: "m".into(),
            outcome: "ok".into(),
            cost_usd: 0.5,
            cacheable: true,
            response: Some("hi".into()),
            output: Some(Value::String("hi".into())),
            ..CallRecord::default()
        };
        j.record_call(&id, &c).unwrap();
        // An error is journaled but neither finishes a call nor is cached.
        c.item = Some(0);
        c.outcome = "server_error".into();
        c.cacheable = false;
        c.output = None;
        c.cost_usd = 0.0;
        j.record_call(&id, &c).unwrap();
        let done = j.finished_calls(&id).unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(done[&("a".to_owned(), Some(1))].output, "hi");
        let hit = j.cached_answer("req", 0).unwrap().unwrap();
        assert_eq!((hit.text.as_str(), hit.cost_usd), ("hi", 0.5));
        assert!(j.cached_answer("req", 1_800_000_000_000).unwrap().is_none());
        // This session's spend is not "by others": it is in the run's own
        // ledger, so a $0.5 call still fits a $0.6 day here.
        assert!(j.try_hold(0.5, &[(0, 0.6, 0.0)]).unwrap().is_ok());
        assert!((j.spent_since(0).unwrap() - 0.5).abs() < 1e-12);
        // Two resumes of one run: the second sees the first's process.
        let mut seen = j.run(&id).unwrap().unwrap();
        j.reopen_run(&seen).unwrap();
        seen.pid = u32::MAX;
        assert!(j.reopen_run(&seen).is_err());
        j.finish_run(&id, "failed").unwrap();
        let row = j.run("last").unwrap().unwrap();
        assert_eq!(
            (row.id.as_str(), row.status.as_str()),
            (id.as_str(), "failed")
        );
        assert!((row.cost_usd - 0.5).abs() < 1e-12);
    }

    #[test]
    fn two_processes_cannot_both_take_the_last_of_a_budget() {
        let dir = tempfile::tempdir().unwrap();
        let a = Journal::open(dir.path(), Clock::Fixed(1_000)).unwrap();
        let b = Journal::open(dir.path(), Clock::Fixed(1_000)).unwrap();
        // $1 a day; A holds $0.6 for a call in flight.
        let held = a.try_hold(0.6, &[(0, 1.0, 0.0)]).unwrap().unwrap();
        // B's $0.6 does not fit beside it…
        assert_eq!(
            b.try_hold(0.6, &[(0, 1.0, 0.0)]).unwrap(),
            Err((0, 0.0, 0.6))
        );
        // …until A's call settles.
        a.release_hold(held).unwrap();
        assert!(b.try_hold(0.6, &[(0, 1.0, 0.0)]).unwrap().is_ok());
    }

    #[test]
    fn periods_are_utc_days_and_months() {
        let t: jiff::Timestamp = "2026-11-26T10:45:12Z".parse().unwrap();
        let (day, month) = period_starts(t.as_millisecond());
        assert_eq!(format_time(day), "2026-11-26 00:00");
        assert_eq!(format_time(month), "2026-11-01 00:00");
        let now = t.as_millisecond();
        assert_eq!(parse_since("7d", now).unwrap(), now - 7 * 86_400_000);
        assert_eq!(
            format_time(parse_since("2026-11-01", now).unwrap()),
            "2026-11-01 00:00"
        );
        assert!(parse_since("last week", now).is_err());
    }
}
