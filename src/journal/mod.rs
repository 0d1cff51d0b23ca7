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
//! Writes go through one writer thread ([`writer`]) that commits whatever
//! is queued in one transaction (group commit; with `synchronous=FULL`, on
//! disk when acknowledged). A paid call's answer is committed before the
//! call returns; a free call's answer (a local model, a cache hit, an error
//! that cost nothing) may still be queued when the call returns, but the
//! executor waits for the journal ([`Journal::flush`]) before a step's
//! dependants start and before a run ends. So a crash at any point loses at
//! most the calls in flight and free answers no dependant has used yet —
//! never a paid answer, never an answer something else was built on.
//!
//! The journal never holds API keys: requests are identified by a hash of
//! what was asked (model, messages, parameters), and keys live only in the
//! provider layer's headers.

mod batches;
mod clock;
mod error;
mod pg;
mod pg_sql;
mod pg_tls;
mod records;
pub mod report;
mod schema;
pub mod spill;
pub mod who;
mod writer;

pub use batches::{BatchLedger, BatchRef};
pub use clock::{Clock, Millis, format_day, format_time, parse_since, period_starts};
pub use error::JournalError;
pub use pg::StateUrl;
pub use pg_tls::TlsWarning;
pub use records::{
    CachedAnswer, CallRecord, EscalatedCall, FinishedCall, NewRun, PlannedStep, RunRow,
    fingerprint, new_run, policy_hash, prompt_hash, sha256_json, sha256_text,
};
use schema::SCHEMA_VERSION;

use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde_json::Value;

use crate::process::{own_start, process_alive_since};
use crate::usage::Usage;
use writer::Tx;

/// The state folder's database file name.
pub const DB_FILE: &str = "state.db";

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

/// Where the journal lives: a state folder holding `state.db` (SQLite, the
/// default: one checkout), or a PostgreSQL database a team shares
/// (`TOLLGATE_STATE_URL`).
#[derive(Debug, Clone)]
pub enum Location {
    Dir(PathBuf),
    Postgres(StateUrl),
}

impl Location {
    /// `TOLLGATE_STATE_URL` when set (a team's shared ledger), else the
    /// state folder ([`state_dir`]).
    pub fn from_env(dir_flag: Option<&Path>) -> Result<Location, JournalError> {
        match std::env::var("TOLLGATE_STATE_URL") {
            Ok(url) if !url.trim().is_empty() => {
                // Records the ledger cannot take are spilled to the state
                // folder the command would otherwise use.
                Ok(Location::Postgres(
                    StateUrl::parse(url.trim())?.with_spill_dir(&state_dir(dir_flag)),
                ))
            }
            _ => Ok(Location::Dir(state_dir(dir_flag))),
        }
    }
}

/// The open journal. Cheap to share (`Arc`). Writes are queued to its
/// writer thread, which group-commits them on its own connection; reads and
/// budget holds (a check and a hold in one transaction) use the journal's
/// other connection, which WAL lets read while the writer commits.
///
/// One type over two backends (an enum, not a trait object): every caller —
/// the executor, the CLI, the suite runner — keeps calling the same
/// methods, the group-commit writer is shared (each write carries both
/// dialects, see [`Tx`]), and SQLite's hot path stays the code it was, one
/// `match` away.
pub struct Journal {
    path: PathBuf,
    clock: Clock,
    /// This process's id for its writes: spending "by others" (other
    /// processes, earlier sessions of a resumed run) is counted from the
    /// journal, this session's from the executor's own ledger.
    session: Arc<str>,
    /// Who runs this process: recorded with each run it begins and each
    /// hold it takes (per-user budgets count by it).
    who: Arc<who::Who>,
    /// Dropped first: what was queued is committed before the reader goes.
    writer: writer::Writer,
    db: Db,
    /// PostgreSQL: where call records the ledger could not take are kept
    /// (see [`spill`]).
    spill: Option<PathBuf>,
}

/// The journal's read (and budget-hold) side.
enum Db {
    Lite(Arc<Mutex<Connection>>),
    /// A connection on a thread of its own (see `pg`).
    Pg {
        /// Boxed: far larger than the SQLite side.
        worker: Box<pg::Worker>,
    },
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
        std::fs::create_dir_all(dir).map_err(|source| JournalError::CreateDir {
            dir: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(DB_FILE);
        // It holds inputs and answers, which may be confidential: readable
        // by its owner only, from its first byte (made here with that mode
        // before SQLite opens it, rather than changed after; SQLite gives
        // the -wal and -shm files the same mode). An existing journal is
        // narrowed too.
        #[cfg(unix)]
        {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            let made = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path);
            if made.is_ok() {
                let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
            }
        }
        let conn = Connection::open(&path).map_err(|source| JournalError::Open {
            path: path.clone(),
            source,
        })?;
        let conn = Self::init(conn, &path)?;
        // The writer's own connection, opened once the file is in WAL mode
        // and has its tables.
        let write = Connection::open(&path).map_err(|source| JournalError::Open {
            path: path.clone(),
            source,
        })?;
        Self::configure(&write)?;
        Self::assemble(conn, path, clock, Some(write))
    }

    /// Opens `DIR/state.db` only if it exists (for commands that only read).
    pub fn open_existing(dir: &Path, clock: Clock) -> Result<Option<Journal>, JournalError> {
        if !dir.join(DB_FILE).exists() {
            return Ok(None);
        }
        Self::open(dir, clock).map(Some)
    }

    /// Opens the journal at `location` (creating or migrating it).
    pub fn open_at(location: &Location, clock: Clock) -> Result<Journal, JournalError> {
        match location {
            Location::Dir(dir) => Self::open(dir, clock),
            Location::Postgres(url) => Self::open_postgres(url, clock),
        }
    }

    /// [`Journal::open_at`] for commands that only read: `None` when there
    /// is no SQLite journal yet (a database is always there to read).
    pub fn open_existing_at(
        location: &Location,
        clock: Clock,
    ) -> Result<Option<Journal>, JournalError> {
        match location {
            Location::Dir(dir) => Self::open_existing(dir, clock),
            Location::Postgres(url) => Self::open_postgres(url, clock).map(Some),
        }
    }

    /// Opens (migrating) the journal in a PostgreSQL database: the writer's
    /// connection and the reader's, each on its own thread.
    pub fn open_postgres(url: &StateUrl, clock: Clock) -> Result<Journal, JournalError> {
        let session = new_session();
        let who = who::Who::from_env();
        // The writer migrates first; the worker then finds the schema.
        let writer = writer::Writer::start(writer::WriteConn::Pg(url.clone()))?;
        let worker = pg::Worker::start(url, session.clone(), who.machine.clone())?;
        Ok(Journal {
            path: PathBuf::from(url.display()),
            clock,
            session: session.into(),
            who: Arc::new(who),
            writer,
            db: Db::Pg {
                worker: Box::new(worker),
            },
            spill: url.spill_path().map(Path::to_path_buf),
        })
    }

    /// The spill file of this ledger (PostgreSQL with a state folder).
    pub fn spill_path(&self) -> Option<&Path> {
        self.spill.as_deref()
    }

    /// Sends every call record spilled on this machine for this ledger
    /// (by this process or one before it) and removes them from the file
    /// once committed; nothing on SQLite or when nothing is spilled.
    pub fn sync_spill(&self) -> Result<spill::Synced, JournalError> {
        let mut synced = spill::Synced::default();
        let (Db::Pg { worker }, Some(path)) = (&self.db, &self.spill) else {
            return Ok(synced);
        };
        if !path.exists() {
            return Ok(synced);
        }
        loop {
            let p = path.clone();
            match worker.call(move |c| spill::sync_batch(c, &p))? {
                Some(batch) => synced.add(batch),
                None => return Ok(synced),
            }
        }
    }

    /// What this ledger's spill file holds, not yet in the ledger.
    pub fn unsent(&self) -> Result<spill::Unsent, JournalError> {
        match &self.spill {
            Some(path) => spill::unsent(path),
            None => Ok(spill::Unsent::default()),
        }
    }

    /// This journal as another user's process would open it (tests).
    #[cfg(test)]
    fn run_by(mut self, user: &str, ci: &str) -> Journal {
        self.who = Arc::new(who::Who {
            user: user.to_owned(),
            machine: "box-1".to_owned(),
            ci: ci.to_owned(),
        });
        self
    }

    /// The SQLite connection (tests that reach under the journal).
    #[cfg(test)]
    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        match &self.db {
            Db::Lite(c) => c.lock().unwrap_or_else(|e| e.into_inner()),
            Db::Pg { .. } => panic!("not a SQLite journal"),
        }
    }

    /// Whether this journal is the PostgreSQL one.
    pub fn is_shared(&self) -> bool {
        matches!(self.db, Db::Pg { .. })
    }

    /// An in-memory journal (tests, benchmarks).
    pub fn in_memory(clock: Clock) -> Result<Journal, JournalError> {
        let conn = Connection::open_in_memory()?;
        // A second connection would open a second, empty database: the
        // writer shares this one.
        let path = PathBuf::from(":memory:");
        let conn = Self::init(conn, &path)?;
        Self::assemble(conn, path, clock, None)
    }

    /// The settings of every connection to the journal. FULL: a committed
    /// call survives a power cut too, not only a crash of the process (group
    /// commit shares each fsync among the writes queued meanwhile).
    /// busy_timeout: two runs at once wait for each other's short
    /// transactions instead of failing — 30 s, because on a loaded machine
    /// (a CI runner building while four processes share one journal) 10 s
    /// of waiting for an fsync-bound commit was seen to run out, and a run
    /// that gives up on its journal fails.
    fn configure(conn: &Connection) -> Result<(), JournalError> {
        conn.busy_timeout(BUSY_WAIT)?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        Ok(())
    }

    /// Sets the journal up on its first connection: WAL, the settings, the
    /// schema (created or migrated).
    fn init(mut conn: Connection, path: &Path) -> Result<Connection, JournalError> {
        // WAL: readers (report, another run's budget check, this process's
        // cache lookups) never block the writer, nor it them.
        Self::configure(&conn)?;
        switch_to_wal(&conn)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(JournalError::NewerSchema {
                path: path.to_path_buf(),
                found: version,
                known: SCHEMA_VERSION,
            });
        }
        if version == SCHEMA_VERSION {
            // Written by this version: its tables are there, and the checks
            // below only read (a column an older build of this version
            // lacked is added, its own commit). An ordinary open writes
            // nothing (a commit is an fsync).
            schema::create(&conn)?;
            return Ok(conn);
        }
        // A new journal (or one to migrate): the schema in one transaction,
        // one commit instead of one per statement (a dozen fsyncs, ~5 ms of
        // a run's start). The file is in WAL mode already, so another
        // process opening it now waits (busy_timeout) for this write lock
        // and then finds the tables; `IF NOT EXISTS` and the column checks
        // make its own pass a no-op.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        schema::create(&tx)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
        Ok(conn)
    }

    /// The journal over its connection and the writer's (`None`: the writer
    /// shares `conn`).
    fn assemble(
        conn: Connection,
        path: PathBuf,
        clock: Clock,
        write: Option<Connection>,
    ) -> Result<Journal, JournalError> {
        let conn = Arc::new(Mutex::new(conn));
        let write_conn = match write {
            Some(c) => writer::WriteConn::Own(c),
            None => writer::WriteConn::Shared(Arc::clone(&conn)),
        };
        Ok(Journal {
            path,
            clock,
            session: new_session().into(),
            who: Arc::new(who::Who::from_env()),
            writer: writer::Writer::start(write_conn)?,
            db: Db::Lite(conn),
            spill: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn now(&self) -> Millis {
        self.clock.now()
    }

    /// A read on whichever backend holds the journal: `lite` under the
    /// SQLite connection's lock, or `pg` on the PostgreSQL worker's thread.
    fn read<T: Send + 'static>(
        &self,
        lite: impl FnOnce(&Connection) -> Result<T, JournalError>,
        pg: impl FnOnce(&mut pg::PgConn, &str) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, JournalError> {
        match &self.db {
            Db::Lite(c) => lite(&c.lock().unwrap_or_else(|e| e.into_inner())),
            Db::Pg { worker } => {
                let who = Arc::clone(&self.who);
                worker.call(move |c| pg(c, &who.machine))
            }
        }
    }

    /// Who runs this process, as its runs record it.
    pub fn who(&self) -> &who::Who {
        &self.who
    }

    /// Runs `write` in the writer's next group and waits until it is
    /// committed; what it produced.
    fn write<T: Send + 'static>(
        &self,
        write: impl FnOnce(Tx<'_>) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, JournalError> {
        let slot = Arc::new(Mutex::new(None));
        let out = Arc::clone(&slot);
        self.writer.write_sync(Box::new(move |c| {
            let v = write(c)?;
            *out.lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
            Ok(())
        }))?;
        let v = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        v.ok_or(JournalError::WriterStopped)
    }

    /// Records a new run (status `running`) and returns its id:
    /// `r-YYYYMMDD-HHMMSS-xxxx` (UTC), short enough to type.
    pub fn begin_run(&self, run: &NewRun) -> Result<String, JournalError> {
        self.write(self.run_insert(run))
    }

    /// [`Journal::begin_run`] without waiting for the disk: the run's id as
    /// soon as the writer has inserted its row in its next group, before
    /// that group's commit (blocking the thread meanwhile). For a run whose
    /// free records need not be durable on their own — a test case: nothing
    /// resumes it — where waiting for a commit per case made a suite on
    /// disk as slow as its fsyncs. Writes queued after it are committed
    /// with it or after it (the writer keeps their order), so a paid call's
    /// committed record always has its run.
    pub fn begin_run_queued(&self, run: &NewRun) -> Result<String, JournalError> {
        if self.is_shared() {
            // The ledger's waits are bounded (`StateUrl::bound`) only on
            // the acknowledged paths.
            return self.begin_run(run);
        }
        let insert = self.run_insert(run);
        let (sent, id) = sync_channel(1);
        self.writer
            .write_queued(Box::new(move |tx| match insert(tx) {
                Ok(id) => {
                    let _ = sent.send(Ok(id));
                    Ok(())
                }
                // Rolled back (its savepoint) and said to the caller too.
                Err(e) => {
                    let e = Arc::new(e);
                    let _ = sent.send(Err(JournalError::Group(Arc::clone(&e))));
                    Err(JournalError::Group(e))
                }
            }))?;
        id.recv().unwrap_or(Err(JournalError::WriterStopped))
    }

    /// The insert of a new run and its steps, run by the writer; the run's
    /// id.
    fn run_insert(
        &self,
        run: &NewRun,
    ) -> impl FnOnce(Tx<'_>) -> Result<String, JournalError> + Send + 'static {
        let now = self.now();
        let stamp = jiff::Timestamp::from_millisecond(now)
            .map(|t| t.strftime("%Y%m%d-%H%M%S").to_string())
            .unwrap_or_default();
        let run = run.clone();
        let who = Arc::clone(&self.who);
        // Inside the writer's transaction: the free id stays free.
        move |tx| {
            let tx = match tx {
                Tx::Lite(tx) => tx,
                Tx::Pg(c) => return pg_sql::begin_run(c, &run, &stamp, now, &who),
            };
            let id = loop {
                let id = format!("r-{stamp}-{:04x}", fastrand::u16(..));
                let taken: bool = tx
                    .prepare_cached("SELECT 1 FROM runs WHERE id = ?1")?
                    .query_row([&id], |_| Ok(true))
                    .optional()?
                    .unwrap_or(false);
                if !taken {
                    break id;
                }
            };
            // Cached statements: a suite begins a run per case.
            tx.prepare_cached(
                "INSERT INTO runs (id, workflow, workflow_path, workflow_hash, policy, policy_path, policy_hash,
                    inputs_hash, inputs, started_ms, status, steps_total, estimate_usd, estimate_max_usd, pid,
                    pid_start, user_name, machine, ci)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'running', ?11, ?12, ?13, ?14, ?15,
                    ?16, ?17, ?18)",
            )?
            .execute(params![
                    id,
                    run.workflow,
                    run.workflow_path,
                    run.workflow_hash,
                    run.policy,
                    run.policy_path,
                    run.policy_hash,
                    sha256_text(&run.inputs_json),
                    run.inputs_json,
                    now,
                    run.steps.len() as i64,
                    run.estimate_usd,
                    run.estimate_max_usd,
                    std::process::id(),
                    own_start(),
                    who.user,
                    who.machine,
                    who.ci,
            ])?;
            let mut step = tx.prepare_cached(
                "INSERT INTO steps (run_id, step, status, planned_model, planned_calls, estimate_usd,
                    estimate_max_usd, flagship_estimate_usd, context_tokens_before,
                    context_tokens_after, context_saved_usd)
                 VALUES (?1, ?2, 'pending', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            for s in &run.steps {
                step.execute(params![
                    id,
                    s.id,
                    s.model,
                    s.calls as i64,
                    s.estimate_usd,
                    s.estimate_max_usd,
                    s.flagship_estimate_usd,
                    s.context.as_ref().map_or(0, |c| c.tokens_before as i64),
                    s.context.as_ref().map_or(0, |c| c.tokens_after as i64),
                    s.context.as_ref().map_or(0.0, |c| c.saved_usd),
                ])?;
            }
            Ok(id)
        }
    }

    /// Marks a journaled run as running again in this process — only if it
    /// is still as `seen` (not running, or running in the dead process
    /// `seen.pid`): two resumes of one run at once would pay twice.
    pub fn reopen_run(&self, seen: &RunRow) -> Result<(), JournalError> {
        let (id, pid, on) = (seen.id.clone(), seen.pid, seen.machine.clone());
        let who = Arc::clone(&self.who);
        let changed = self.write(move |tx| {
            let tx = match tx {
                Tx::Lite(tx) => tx,
                Tx::Pg(c) => return pg_sql::reopen_run(c, &id, pid, &on, &who.machine),
            };
            Ok(tx.execute(
                "UPDATE runs SET status = 'running', finished_ms = NULL, pid = ?2, pid_start = ?4,
                        sessions = sessions + 1
                     WHERE id = ?1 AND (status != 'running' OR pid = ?3)",
                params![id, std::process::id(), pid, own_start()],
            )? as u64)
        })?;
        if changed == 0 {
            return Err(JournalError::ResumedElsewhere(seen.id.clone()));
        }
        Ok(())
    }

    /// Records how a run ended; its cost is every call of every session
    /// (the writer commits in order: every call queued before is counted).
    pub fn finish_run(&self, id: &str, status: &str) -> Result<(), JournalError> {
        self.writer.write_sync(self.run_finish(id, status))
    }

    /// [`Journal::finish_run`], queued: committed with the writer's next
    /// group (a test case's end, which nothing waits on); a failure is
    /// reported by the next [`Journal::flush`].
    pub fn queue_finish_run(&self, id: &str, status: &str) -> Result<(), JournalError> {
        self.writer.write_queued(self.run_finish(id, status))
    }

    /// The write of how a run ended.
    fn run_finish(&self, id: &str, status: &str) -> writer::WriteFn {
        let (id, status, now) = (id.to_owned(), status.to_owned(), self.now());
        Box::new(move |tx| {
            let tx = match tx {
                Tx::Lite(tx) => tx,
                Tx::Pg(c) => return pg_sql::finish_run(c, &id, &status, now),
            };
            tx.prepare_cached(
                "UPDATE runs SET status = ?2, finished_ms = ?3,
                    cost_usd = (SELECT COALESCE(SUM(MAX(cost_usd, 0)), 0) FROM calls WHERE run_id = ?1)
                 WHERE id = ?1",
            )?
            .execute(params![id, status, now])?;
            Ok(())
        })
    }

    /// The write of a step's status.
    fn step_write(&self, run_id: &str, step: &str, status: &str) -> writer::WriteFn {
        let (run_id, step, status) = (run_id.to_owned(), step.to_owned(), status.to_owned());
        let now = self.now();
        Box::new(move |tx| {
            let tx = match tx {
                Tx::Lite(tx) => tx,
                Tx::Pg(c) => return pg_sql::step_status(c, &run_id, &step, &status, now),
            };
            tx.prepare_cached(
                "UPDATE steps SET status = ?3, finished_ms = ?4 WHERE run_id = ?1 AND step = ?2",
            )?
            .execute(params![run_id, step, status, now])?;
            Ok(())
        })
    }

    /// Records how a step ended, committed before this returns.
    pub fn finish_step(&self, run_id: &str, step: &str, status: &str) -> Result<(), JournalError> {
        self.writer
            .write_sync(self.step_write(run_id, step, status))
    }

    /// Queues how a step ended, after every write queued before it: durable
    /// by the next [`Journal::flush`], which reports its failure.
    pub fn queue_step(&self, run_id: &str, step: &str, status: &str) -> Result<(), JournalError> {
        self.writer
            .write_queued(self.step_write(run_id, step, status))
    }

    /// The write of one call attempt.
    fn call_write(&self, run_id: &str, c: CallRecord) -> writer::RecordFn {
        let (run_id, session, now) = (run_id.to_owned(), Arc::clone(&self.session), self.now());
        Box::new(move |tx| {
            let tx = match tx {
                Tx::Lite(tx) => tx,
                Tx::Pg(pg) => return pg_sql::insert_call(pg, &run_id, &session, now, &c),
            };
            let output = c.output.as_ref().map(Value::to_string);
            tx.prepare_cached(
                "INSERT INTO calls (run_id, session, step, item, attempt, request_hash, model, provider,
                    provider_model, tier, local, started_ms, finished_ms, latency_ms, outcome, error,
                    input_tokens, output_tokens, cached_tokens, cache_write_tokens, reasoning_tokens,
                    cache_write_1h_tokens, cost_usd, list_cost_usd, flagship_cost_usd, estimate_usd,
                    saved_usd, batch, from_cache, cacheable, response, output, prompt_hash, usage_flag,
                    cascade_rule, escalate_to, escalated_from, endpoint)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                    ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32, ?33, ?34,
                    ?35, ?36, ?37, ?38)",
            )?
            .execute(params![
                run_id,
                &*session,
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
                now,
                c.latency_ms as i64,
                c.outcome.as_str(),
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
                c.cascade_rule,
                c.escalate_to,
                c.escalated_from,
                c.endpoint,
            ])?;
            Ok(())
        })
    }

    /// Writes one call attempt, committed before this returns (blocking
    /// the thread: not for async code, which has [`Journal::commit_call`]).
    pub fn record_call(&self, run_id: &str, c: &CallRecord) -> Result<(), JournalError> {
        self.writer
            .write_sync(Box::new(self.call_write(run_id, c.clone())))
    }

    /// Writes one call attempt; returns once it is committed (the writer
    /// commits it with whatever else is queued).
    pub async fn commit_call(&self, run_id: &str, c: CallRecord) -> Result<(), JournalError> {
        self.writer
            .write_record(self.call_write(run_id, c), true)
            .await
    }

    /// Queues one call attempt, waiting only for room in the bounded queue:
    /// durable by the next [`Journal::flush`], which reports its failure.
    pub async fn queue_call(&self, run_id: &str, c: CallRecord) -> Result<(), JournalError> {
        self.writer
            .write_record(self.call_write(run_id, c), false)
            .await
    }

    /// Waits until every write queued so far is committed; the first
    /// failure of a queued write since the last flush, if any.
    pub async fn flush(&self) -> Result<(), JournalError> {
        self.writer.flush().await
    }

    /// [`Journal::flush`], blocking the thread.
    pub fn flush_blocking(&self) -> Result<(), JournalError> {
        self.writer.flush_sync()
    }

    /// Every call of a run that finished with an answer, by (step, item).
    pub fn finished_calls(
        &self,
        run_id: &str,
    ) -> Result<std::collections::HashMap<(String, Option<usize>), FinishedCall>, JournalError>
    {
        let run = run_id.to_owned();
        self.read(
            |conn| Self::lite_finished_calls(conn, run_id),
            move |c, _| pg_sql::finished_calls(c, &run),
        )
    }

    fn lite_finished_calls(
        conn: &Connection,
        run_id: &str,
    ) -> Result<pg_sql::Finished, JournalError> {
        {
            let mut stmt = conn
            .prepare_cached(
                "SELECT step, item, model, output, input_tokens, output_tokens, cached_tokens,
                    cache_write_tokens, reasoning_tokens, cache_write_1h_tokens, cost_usd, prompt_hash
                 FROM calls WHERE run_id = ?1 AND output IS NOT NULL ORDER BY id",
            )
            ?;
            let rows = stmt.query_map([run_id], |r| {
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
            })?;
            rows.collect::<Result<_, _>>().map_err(JournalError::Db)
        }
    }

    /// Every call of a run whose first answer failed its cascade's check
    /// and has no answer yet, by (step, item): a resume escalates it
    /// straight away instead of paying for the first call again.
    pub fn escalated_calls(
        &self,
        run_id: &str,
    ) -> Result<std::collections::HashMap<(String, Option<usize>), EscalatedCall>, JournalError>
    {
        let run = run_id.to_owned();
        self.read(
            |conn| Self::lite_escalated_calls(conn, run_id),
            move |c, _| pg_sql::escalated_calls(c, &run),
        )
    }

    fn lite_escalated_calls(
        conn: &Connection,
        run_id: &str,
    ) -> Result<pg_sql::Escalated, JournalError> {
        let mut stmt = conn.prepare_cached(
            "SELECT step, item, model, escalate_to, error, prompt_hash, cost_usd
             FROM calls WHERE run_id = ?1 AND outcome = 'escalated' ORDER BY id",
        )?;
        let rows = stmt.query_map([run_id], |r| {
            let item: Option<i64> = r.get(1)?;
            Ok((
                (r.get::<_, String>(0)?, item.map(|i| i as usize)),
                EscalatedCall {
                    model: r.get(2)?,
                    to: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
                    reason: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
                    prompt_hash: r.get(5)?,
                    cost_usd: r.get(6)?,
                },
            ))
        })?;
        rows.collect::<Result<_, _>>().map_err(JournalError::Db)
    }

    /// How often each cascade rule of a policy escalated: (escalated,
    /// first answers) over every run of the policy since `since`.
    pub fn escalation_history(
        &self,
        policy: &str,
        since: Millis,
    ) -> Result<std::collections::BTreeMap<String, (u64, u64)>, JournalError> {
        let owned = policy.to_owned();
        self.read(
            |conn| {
                let mut stmt = conn.prepare(
                    "SELECT c.cascade_rule, SUM(c.outcome = 'escalated'), COUNT(*)
                     FROM calls c JOIN runs r ON r.id = c.run_id
                     WHERE c.cascade_rule IS NOT NULL AND c.escalated_from IS NULL
                       AND r.policy = ?1 AND c.finished_ms >= ?2
                       AND c.outcome IN ('ok', 'escalated', 'cached', 'truncated')
                     GROUP BY c.cascade_rule",
                )?;
                let rows = stmt.query_map(params![policy, since], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        (
                            r.get::<_, i64>(1)?.max(0) as u64,
                            r.get::<_, i64>(2)?.max(0) as u64,
                        ),
                    ))
                })?;
                rows.collect::<Result<_, _>>().map_err(JournalError::Db)
            },
            move |c, _| pg_sql::escalation_history(c, &owned, since),
        )
    }

    /// The newest whole, valid answer to an identical request bought at or
    /// after `not_before` (cache hits are not themselves sources: the TTL
    /// counts from when the answer was bought).
    pub fn cached_answer(
        &self,
        request_hash: &str,
        not_before: Millis,
    ) -> Result<Option<CachedAnswer>, JournalError> {
        let hash = request_hash.to_owned();
        self.read(
            |conn| Self::lite_cached_answer(conn, request_hash, not_before),
            move |c, _| pg_sql::cached_answer(c, &hash, not_before),
        )
    }

    fn lite_cached_answer(
        conn: &Connection,
        request_hash: &str,
        not_before: Millis,
    ) -> Result<Option<CachedAnswer>, JournalError> {
        // Cached: asked before every call, and preparing the statement cost
        // more than running it (three quarters of the lookup, perf).
        conn.prepare_cached(
            "SELECT response, input_tokens, output_tokens, cached_tokens, cache_write_tokens,
                    reasoning_tokens, cache_write_1h_tokens, cost_usd, run_id
                 FROM calls
                 WHERE request_hash = ?1 AND cacheable = 1 AND from_cache = 0 AND finished_ms >= ?2
                 ORDER BY finished_ms DESC, id DESC LIMIT 1",
        )?
        .query_row(params![request_hash, not_before], |r| {
            Ok(CachedAnswer {
                text: r.get(0)?,
                usage: usage_from(r, 1)?,
                cost_usd: r.get(7)?,
                run_id: r.get(8)?,
            })
        })
        .optional()
        .map_err(JournalError::Db)
    }

    /// Budgets over time, across processes: in one write transaction (so
    /// two processes cannot interleave), counts what others spent since each
    /// check's start and the worst cases of their calls in flight (holds of
    /// live processes), and holds `amount` if it fits every check. A check
    /// whose [`SpendCheck::user`] is set counts only this process's user
    /// (runs they started, holds they took, on every machine of the
    /// ledger). Returns the hold, or the first check that does not fit with
    /// what others spent and hold.
    pub fn try_hold(
        &self,
        amount: f64,
        checks: &[SpendCheck],
    ) -> Result<Result<i64, (usize, f64, f64)>, JournalError> {
        let now = self.now();
        let conn = match &self.db {
            Db::Lite(c) => c,
            Db::Pg { worker } => {
                let (session, checks) = (Arc::clone(&self.session), checks.to_vec());
                let who = Arc::clone(&self.who);
                return worker.call(move |c| pg::try_hold(c, &session, &who, now, amount, &checks));
            }
        };
        let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let holds: Vec<(i64, u32, Option<i64>, f64, Millis, String)> = {
            // Cached statements, here and below: a paid call under a period
            // budget takes a hold before it is sent.
            let mut stmt = tx.prepare_cached(
                "SELECT id, pid, pid_start, amount_usd, created_ms, user_name FROM holds WHERE session != ?1",
            )?;
            stmt.query_map([&*self.session], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })?
            .collect::<Result<_, _>>()?
        };
        let (mut in_flight, mut users_in_flight) = (0.0, 0.0);
        for (id, pid, pid_start, held, created, user) in holds {
            if process_alive_since(pid, pid_start) && now - created < STALE_HOLD_MS {
                in_flight += held;
                if user == self.who.user {
                    users_in_flight += held;
                }
            } else {
                // Left by a process that died mid-call.
                tx.execute("DELETE FROM holds WHERE id = ?1", [id])?;
            }
        }
        for (index, check) in checks.iter().enumerate() {
            let (spent, held): (f64, f64) = if check.user {
                let spent = tx
                    .prepare_cached(
                        "SELECT COALESCE(SUM(MAX(c.cost_usd, 0)), 0) FROM calls c JOIN runs r ON r.id = c.run_id
                         WHERE c.finished_ms >= ?1 AND c.session != ?2 AND r.user_name = ?3",
                    )?
                    .query_row(params![check.since, &*self.session, self.who.user], |r| {
                        r.get(0)
                    })?;
                (spent, users_in_flight)
            } else {
                let spent = tx
                    .prepare_cached(
                        "SELECT COALESCE(SUM(MAX(cost_usd, 0)), 0) FROM calls WHERE finished_ms >= ?1 AND session != ?2",
                    )?
                    .query_row(params![check.since, &*self.session], |r| r.get(0))?;
                (spent, in_flight)
            };
            if spent + held + check.local + amount > check.limit + 1e-12 {
                tx.commit()?;
                return Ok(Err((index, spent, held)));
            }
        }
        tx.prepare_cached(
            "INSERT INTO holds (session, pid, pid_start, amount_usd, created_ms, user_name)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            &*self.session,
            std::process::id(),
            own_start(),
            amount,
            now,
            self.who.user
        ])?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        Ok(Ok(id))
    }

    /// Ends a hold: its call settled and its cost is journaled. Queued
    /// after the call's record, so the hold goes in the same transaction as
    /// the cost or a later one — others may count the call twice for a
    /// moment, never not at all. Durable by the next [`Journal::flush`].
    pub fn release_hold(&self, id: i64) -> Result<(), JournalError> {
        self.writer.write_queued(Box::new(move |tx| {
            let tx = match tx {
                Tx::Lite(tx) => tx,
                Tx::Pg(c) => return pg_sql::release_hold(c, id),
            };
            tx.prepare_cached("DELETE FROM holds WHERE id = ?1")?
                .execute([id])?;
            Ok(())
        }))
    }

    /// Money spent since `since`, by everyone.
    pub fn spent_since(&self, since: Millis) -> Result<f64, JournalError> {
        self.read(
            |conn| {
                conn.query_row(
                    "SELECT COALESCE(SUM(MAX(cost_usd, 0)), 0) FROM calls WHERE finished_ms >= ?1",
                    [since],
                    |r| r.get(0),
                )
                .map_err(JournalError::Db)
            },
            move |c, _| pg_sql::spent_since(c, since),
        )
    }

    /// Money a run spent, over all its sessions.
    pub fn run_cost(&self, run_id: &str) -> Result<f64, JournalError> {
        let run = run_id.to_owned();
        self.read(
            |conn| {
                conn.prepare_cached(
                    "SELECT COALESCE(SUM(MAX(cost_usd, 0)), 0) FROM calls WHERE run_id = ?1",
                )?
                .query_row([run_id], |r| r.get(0))
                .map_err(JournalError::Db)
            },
            move |c, _| pg_sql::run_cost(c, &run),
        )
    }

    /// One run; `last` is the newest.
    pub fn run(&self, id: &str) -> Result<Option<RunRow>, JournalError> {
        let owned = id.to_owned();
        self.read(
            |conn| Self::lite_run(conn, id),
            move |c, machine| pg_sql::run(c, &owned, machine),
        )
    }

    fn lite_run(conn: &Connection, id: &str) -> Result<Option<RunRow>, JournalError> {
        let sql = format!(
            "{RUN_SELECT} WHERE {} ORDER BY r.started_ms DESC, r.rowid DESC LIMIT 1",
            if id == "last" { "1 = 1" } else { "r.id = ?1" }
        );
        let mut stmt = conn.prepare(&sql)?;
        let row = if id == "last" {
            stmt.query_row([], run_row).optional()
        } else {
            stmt.query_row([id], run_row).optional()
        };
        row.map_err(JournalError::Db)
    }

    /// The newest runs first.
    pub fn runs(&self, limit: usize) -> Result<Vec<RunRow>, JournalError> {
        self.read(
            |conn| Self::lite_runs(conn, limit),
            move |c, machine| pg_sql::runs(c, limit, machine),
        )
    }

    fn lite_runs(conn: &Connection, limit: usize) -> Result<Vec<RunRow>, JournalError> {
        let mut stmt = conn.prepare(&format!(
            "{RUN_SELECT} ORDER BY r.started_ms DESC, r.rowid DESC LIMIT ?1"
        ))?;
        let rows = stmt
            .query_map([limit as i64], run_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

/// One budget a hold is checked against: what others spent since `since`
/// and hold in flight, plus `local` (this session's own spend and
/// reservations) and the call's worst case, must stay within `limit`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpendCheck {
    pub since: Millis,
    pub limit: f64,
    pub local: f64,
    /// Counts only this process's user (a per-user budget), not everyone.
    pub user: bool,
}

/// A new session id: this process, and a random part (a pid alone repeats
/// across machines and restarts).
fn new_session() -> String {
    format!("{}-{:08x}", std::process::id(), fastrand::u32(..))
}

const RUN_SELECT: &str =
    "SELECT r.id, r.workflow, r.workflow_path, r.workflow_hash, r.policy, r.policy_path,
    r.policy_hash, r.inputs, r.started_ms, r.finished_ms, r.status, r.steps_total,
    (SELECT COUNT(*) FROM steps s WHERE s.run_id = r.id AND s.status IN ('succeeded', 'skipped')),
    (SELECT COALESCE(SUM(MAX(cost_usd, 0)), 0) FROM calls c WHERE c.run_id = r.id),
    r.estimate_usd, r.pid, r.sessions, r.pid_start, r.user_name, r.machine, r.ci
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
        user: who::clean(&r.get::<_, String>(18)?),
        machine: who::clean(&r.get::<_, String>(19)?),
        ci: who::clean(&r.get::<_, String>(20)?),
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

/// How long a journal's first open waits for another process's hold on it
/// (the connections' `busy_timeout` too).
const BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Puts the journal in WAL mode (a no-op when it is already).
///
/// The switch needs the file's exclusive lock. When two processes open a
/// new journal at the same moment, each holds a shared lock and wants the
/// exclusive one; SQLite then answers `SQLITE_BUSY` at once to one of them
/// without calling its busy handler (waiting would deadlock). That one lets
/// go of its lock by failing the statement, and tries again here after a
/// short pause, until [`BUSY_WAIT`].
fn switch_to_wal(conn: &Connection) -> Result<(), JournalError> {
    let deadline = std::time::Instant::now() + BUSY_WAIT;
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(50));
            }
            r => return r.map_err(JournalError::from),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::AttemptOutcome;

    /// Several processes starting on a new state folder at the same moment
    /// each open the journal: every open succeeds (the switch to WAL is
    /// retried when SQLite refuses it at once), the schema is made once,
    /// and the file is its owner's only. Connections in one process lock
    /// the file as separate processes do (SQLite's own per-file locks).
    #[test]
    fn many_opening_a_new_journal_at_once_all_succeed() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let start = Arc::new(std::sync::Barrier::new(6));
            let opened: Vec<_> = (0..6)
                .map(|_| {
                    let (dir, start) = (dir.path().to_path_buf(), Arc::clone(&start));
                    std::thread::spawn(move || {
                        start.wait();
                        Journal::open(&dir, Clock::Fixed(1_700_000_000_000)).map(|_| ())
                    })
                })
                .collect();
            for o in opened {
                o.join().unwrap().expect("every open succeeds");
            }
            let j = Journal::open(dir.path(), Clock::Fixed(1_700_000_000_000)).unwrap();
            let version: i64 = j
                .conn()
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .unwrap();
            assert_eq!(version, SCHEMA_VERSION);
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(dir.path().join(DB_FILE))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600);
            }
        }
    }

    /// Where a test's journal lives: the same tests run on both backends.
    enum Store {
        Dir(tempfile::TempDir),
        Pg(pg::testing::TestDb),
    }

    impl Store {
        /// Opens the store (again: another process would open the same).
        fn open(&self, clock: Clock) -> Journal {
            match self {
                Store::Dir(d) => Journal::open(d.path(), clock).unwrap(),
                Store::Pg(db) => Journal::open_postgres(&db.url, clock).unwrap(),
            }
        }
    }

    /// A SQLite state folder, and a fresh PostgreSQL database when the
    /// test server is there.
    fn stores() -> Vec<Store> {
        let mut v = vec![Store::Dir(tempfile::tempdir().unwrap())];
        v.extend(pg::testing::TestDb::create().map(Store::Pg));
        v
    }

    /// A team budget of `limit` since the epoch, this session spending
    /// nothing else.
    fn team(limit: f64) -> SpendCheck {
        SpendCheck {
            since: 0,
            limit,
            local: 0.0,
            user: false,
        }
    }

    fn new_run() -> NewRun {
        NewRun {
            workflow: "wf".into(),
            workflow_path: "wf.yaml".into(),
            workflow_hash: "h".into(),
            policy: "p".into(),
            policy_path: "p.yaml".into(),
            policy_hash: "ph".into(),
            inputs_json: serde_json::json!({"ticket": "x"}).to_string(),
            estimate_usd: 0.01,
            estimate_max_usd: 0.02,
            steps: vec![PlannedStep {
                id: "a".into(),
                model: Some("m".into()),
                calls: 2,
                estimate_usd: 0.01,
                estimate_max_usd: 0.02,
                flagship_estimate_usd: 0.1,
                context: None,
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
            outcome: AttemptOutcome::Ok,
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

    /// Cascades and context management read back alike from both stores
    /// (their SQL differs by dialect): a resume's escalated calls, the
    /// plan's escalation history, and the report's cascade line and context
    /// saving.
    #[test]
    fn cascades_and_context_read_back_alike_on_both_stores() {
        let mut reports = Vec::new();
        for store in stores() {
            let j = store.open(Clock::Fixed(1_700_000_000_000));
            let mut run = new_run();
            run.steps[0].context = Some(records::PlannedContext {
                tokens_before: 5000,
                tokens_after: 300,
                saved_usd: 0.004,
            });
            // A step that failed: its planned saving is not counted.
            run.steps.push(PlannedStep {
                id: "b".into(),
                context: Some(records::PlannedContext {
                    tokens_before: 100,
                    tokens_after: 50,
                    saved_usd: 1.0,
                }),
                ..run.steps[0].clone()
            });
            let id = j.begin_run(&run).unwrap();
            let first = |item: usize, outcome: AttemptOutcome, cost: f64| CallRecord {
                step: "a".into(),
                item: Some(item),
                model: "cheap".into(),
                tier: "budget".into(),
                outcome,
                cost_usd: cost,
                cascade_rule: Some("summaries".into()),
                ..CallRecord::default()
            };
            let escalated = |item: usize, cost: f64, why: &str| CallRecord {
                escalate_to: Some("big".into()),
                error: Some(why.into()),
                prompt_hash: Some(format!("ph{item}")),
                ..first(item, AttemptOutcome::Escalated, cost)
            };
            let answered = |call: CallRecord| CallRecord {
                output: Some(serde_json::json!("fine")),
                ..call
            };
            // Item 0 escalated and the target answered; item 1 escalated
            // and waits for its target (a resume escalates it); items 2 and
            // 3 stayed cheap (a negative cost never counts).
            j.record_call(&id, &escalated(0, 0.01, "invalid_output: not JSON"))
                .unwrap();
            j.record_call(
                &id,
                &answered(CallRecord {
                    model: "big".into(),
                    escalated_from: Some("cheap".into()),
                    ..first(0, AttemptOutcome::Ok, 0.3)
                }),
            )
            .unwrap();
            j.record_call(&id, &escalated(1, 0.02, "low_confidence: -1.2"))
                .unwrap();
            j.record_call(&id, &answered(first(2, AttemptOutcome::Ok, 0.01)))
                .unwrap();
            j.record_call(&id, &answered(first(3, AttemptOutcome::Ok, -5.0)))
                .unwrap();
            // Item 4 escalated to an answer from the response cache: priced
            // at what it cost when bought.
            j.record_call(&id, &escalated(4, 0.01, "invalid_output: not JSON"))
                .unwrap();
            j.record_call(
                &id,
                &answered(CallRecord {
                    model: "big".into(),
                    escalated_from: Some("cheap".into()),
                    from_cache: true,
                    saved_usd: 0.3,
                    ..first(4, AttemptOutcome::Cached, 0.0)
                }),
            )
            .unwrap();
            j.finish_step(&id, "a", "succeeded").unwrap();
            j.finish_step(&id, "b", "failed").unwrap();

            let left = j.escalated_calls(&id).unwrap();
            assert_eq!(left.len(), 3);
            let e = &left[&("a".to_owned(), Some(1))];
            assert_eq!(
                (
                    e.model.as_str(),
                    e.to.as_str(),
                    e.reason.as_str(),
                    e.prompt_hash.as_deref(),
                    e.cost_usd
                ),
                ("cheap", "big", "low_confidence: -1.2", Some("ph1"), 0.02)
            );
            assert_eq!(j.escalation_history("p", 0).unwrap()["summaries"], (3, 5));
            assert!(j.escalation_history("other", 0).unwrap().is_empty());
            assert!(
                j.escalation_history("p", 1_700_000_000_001)
                    .unwrap()
                    .is_empty()
            );

            let r = report::build(&j, None).unwrap();
            assert_eq!(r.cascades.len(), 1, "{:?}", r.cascades);
            let c = &r.cascades[0];
            assert_eq!(
                (c.key.as_str(), c.first_answers, c.escalated),
                ("p/summaries", 5, 3)
            );
            assert!((c.escalation_rate - 0.6).abs() < 1e-12);
            assert!((c.first_cost_usd - 0.05).abs() < 1e-12, "{c:?}");
            assert!((c.escalated_cost_usd - 0.3).abs() < 1e-12, "{c:?}");
            // Five first answers at the answered escalations' $0.30 each
            // (the cached one at its price when bought).
            assert!((c.all_on_target_usd.unwrap() - 1.5).abs() < 1e-9, "{c:?}");
            assert!((c.saved_usd.unwrap() - 1.15).abs() < 1e-9, "{c:?}");
            let s = &r.totals.savings;
            assert_eq!(s.context_tokens, 4700);
            assert!((s.context_usd - 0.004).abs() < 1e-12, "{s:?}");
            let step_a = r.by_step.iter().find(|l| l.key == "wf/a").unwrap();
            assert_eq!(step_a.savings.context_tokens, 4700);
            let step_b = r.by_step.iter().find(|l| l.key == "wf/b").unwrap();
            assert_eq!(step_b.savings.context_tokens, 0);
            reports.push(r);
        }
        // The rest of the report is summed in Rust from the same rows: equal
        // (the cascade sums come from each database, checked above).
        if let [lite, pg] = &mut reports[..] {
            lite.cascades.clear();
            pg.cascades.clear();
            assert_eq!(lite, pg);
        }
    }

    /// A team database an older build made (schema 1, before cascades and
    /// context management) is migrated in place: its runs stay, the new
    /// columns take their defaults, and cascades journal into it.
    #[test]
    fn a_postgres_ledger_of_schema_1_is_migrated() {
        let Some(db) = pg::testing::TestDb::create() else {
            return;
        };
        db.exec(&format!(
            "CREATE TABLE schema_version (version BIGINT NOT NULL);
             {}
             INSERT INTO schema_version (version) VALUES (1);
             INSERT INTO runs (id, workflow, workflow_path, workflow_hash, policy, policy_path,
                policy_hash, inputs_hash, inputs, started_ms, status, steps_total, estimate_usd,
                estimate_max_usd, pid)
             VALUES ('r-old', 'wf', 'wf.yaml', 'h', 'p', 'p.yaml', 'ph', 'ih', '{{}}', 1,
                'succeeded', 1, 0.5, 0.5, 1);
             INSERT INTO steps (run_id, step, status, planned_calls, estimate_usd,
                estimate_max_usd, flagship_estimate_usd)
             VALUES ('r-old', 'a', 'succeeded', 1, 0.5, 0.5, 1.0);",
            pg::MIGRATIONS[0]
        ));
        let j = Journal::open_postgres(&db.url, Clock::Fixed(1_700_000_000_000))
            .unwrap()
            .run_by("ana", "gitlab");
        let old = j.run("r-old").unwrap().unwrap();
        assert_eq!(old.estimate_usd, 0.5);
        // Schema 3: nobody recorded for the old run; the new ones say who.
        assert_eq!((old.user.as_str(), old.ci.as_str()), ("", ""));
        let id = j.begin_run(&new_run()).unwrap();
        j.record_call(
            &id,
            &CallRecord {
                step: "a".into(),
                model: "m".into(),
                tier: "budget".into(),
                outcome: AttemptOutcome::Escalated,
                cascade_rule: Some("r".into()),
                escalate_to: Some("big".into()),
                ..CallRecord::default()
            },
        )
        .unwrap();
        assert_eq!(
            j.escalated_calls(&id).unwrap()[&("a".to_owned(), None)].to,
            "big"
        );
        let r = report::build(&j, None).unwrap();
        assert_eq!((r.runs, r.totals.savings.context_tokens), (2, 0));
        assert_eq!(r.cascades[0].key, "p/r");
        let run = j.run(&id).unwrap().unwrap();
        assert_eq!((run.user.as_str(), run.ci.as_str()), ("ana", "gitlab"));
    }

    #[test]
    fn finished_calls_and_cache_round_trip() {
        for store in stores() {
            finished_calls_and_cache_round_trip_on(store.open(Clock::Fixed(1_700_000_000_000)));
        }
        finished_calls_and_cache_round_trip_on(
            Journal::in_memory(Clock::Fixed(1_700_000_000_000)).unwrap(),
        );
    }

    fn finished_calls_and_cache_round_trip_on(j: Journal) {
        let id = j.begin_run(&new_run()).unwrap();
        assert!(id.starts_with("r-20231114-221320-"), "{id}");
        let mut c = CallRecord {
            step: "a".into(),
            item: Some(1),
            request_hash: Some("req".into()),
            model: "m".into(),
            outcome: AttemptOutcome::Ok,
            cost_usd: 0.5,
            cacheable: true,
            response: Some("hi".into()),
            output: Some(Value::String("hi".into())),
            ..CallRecord::default()
        };
        j.record_call(&id, &c).unwrap();
        // An error is journaled but neither finishes a call nor is cached.
        c.item = Some(0);
        c.outcome = AttemptOutcome::Error(crate::provider::ErrorKind::Server);
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
        assert!(j.try_hold(0.5, &[team(0.6)]).unwrap().is_ok());
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
        for store in stores() {
            two_processes_cannot_both_take_the_last_of_a_budget_on(&store);
        }
    }

    fn two_processes_cannot_both_take_the_last_of_a_budget_on(store: &Store) {
        let a = store.open(Clock::Fixed(1_000));
        let b = store.open(Clock::Fixed(1_000));
        // $1 a day; A holds $0.6 for a call in flight.
        let held = a.try_hold(0.6, &[team(1.0)]).unwrap().unwrap();
        // B's $0.6 does not fit beside it…
        assert_eq!(b.try_hold(0.6, &[team(1.0)]).unwrap(), Err((0, 0.0, 0.6)));
        // …until A's call settles (the release is queued behind the
        // call's record: committed by the next flush).
        a.release_hold(held).unwrap();
        a.flush_blocking().unwrap();
        assert!(b.try_hold(0.6, &[team(1.0)]).unwrap().is_ok());
    }

    /// A per-user budget counts only that user's spend and holds — from
    /// every session of theirs, none of anyone else's — in the same
    /// check-and-hold as the team's budget; the report splits by who ran.
    #[test]
    fn a_per_user_budget_counts_only_that_users_spend_and_holds() {
        for store in stores() {
            let open =
                |user: &str, ci: &str| store.open(Clock::Fixed(1_700_000_000_000)).run_by(user, ci);
            let user = |limit: f64| SpendCheck {
                since: 0,
                limit,
                local: 0.0,
                user: true,
            };
            let ana = open("ana", "");
            let id = ana.begin_run(&new_run()).unwrap();
            ana.record_call(
                &id,
                &CallRecord {
                    cost_usd: 0.5,
                    ..answer(0)
                },
            )
            .unwrap();
            // Another session of ana's holds 0.3 in flight: 0.8 of her 1.0.
            let ana2 = open("ana", "github-actions");
            ana2.try_hold(0.3, &[team(10.0), user(1.0)])
                .unwrap()
                .unwrap();
            // Bo's day is his own.
            let bo = open("bo", "");
            assert!(bo.try_hold(0.9, &[team(10.0), user(1.0)]).unwrap().is_ok());
            // A third session of ana's: 0.3 more crosses her day (the
            // per-user check, index 1, with her spend and her holds only)…
            let ana3 = open("ana", "");
            assert_eq!(
                ana3.try_hold(0.3, &[team(10.0), user(1.0)]).unwrap(),
                Err((1, 0.5, 0.3))
            );
            // …0.2 does not, and the team's check still counts everyone
            // else's holds (a session's own are its `local`).
            assert!(
                ana3.try_hold(0.2, &[team(10.0), user(1.0)])
                    .unwrap()
                    .is_ok()
            );
            assert_eq!(
                bo.try_hold(0.1, &[team(1.0), user(1.0)]).unwrap(),
                Err((0, 0.5, 0.5))
            );
            // Who ran it is recorded and read back; the report splits by it.
            let bo_run = bo.begin_run(&new_run()).unwrap();
            bo.record_call(
                &bo_run,
                &CallRecord {
                    cost_usd: 0.25,
                    ..answer(1)
                },
            )
            .unwrap();
            let run = ana.run(&id).unwrap().unwrap();
            assert_eq!(
                (run.user.as_str(), run.machine.as_str(), run.ci.as_str()),
                ("ana", "box-1", "")
            );
            let r = report::build_by(&ana, None, &[report::By::User, report::By::Ci]).unwrap();
            let users: Vec<(&str, f64)> = r
                .by_user
                .as_ref()
                .unwrap()
                .iter()
                .map(|l| (l.key.as_str(), l.cost_usd))
                .collect();
            assert_eq!(users, [("ana", 0.5), ("bo", 0.25)]);
            assert_eq!(r.by_ci.as_ref().unwrap()[0].key, "-");
            assert!(r.by_machine.is_none());
        }
    }

    /// Who ran it, read back from a database others write to: bounded and
    /// without control characters, whatever was stored.
    #[test]
    fn who_is_cleaned_when_read_back() {
        for store in stores() {
            let j = store.open(Clock::Fixed(1_700_000_000_000));
            let hostile = format!("\u{1b}]0;pwned\u{7}{}", "x".repeat(500));
            let j = j.run_by(&hostile, "ci\nfake");
            let id = j.begin_run(&new_run()).unwrap();
            let run = j.run(&id).unwrap().unwrap();
            assert!(!run.user.chars().any(char::is_control), "{:?}", run.user);
            assert!(run.user.chars().count() <= who::MAX_WHO);
            assert_eq!(run.ci, "ci?fake");
        }
    }

    /// A SQLite journal of schema 1 (before who ran it was recorded) is
    /// migrated: its runs stay, read back with nobody recorded, and new
    /// runs and holds record who.
    #[test]
    fn a_sqlite_journal_of_schema_1_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let clock = || Clock::Fixed(1_700_000_000_000);
        let old = {
            let j = Journal::open(dir.path(), clock()).unwrap();
            let id = j.begin_run(&new_run()).unwrap();
            let c = j.conn();
            for (table, column) in [
                ("runs", "user_name"),
                ("runs", "machine"),
                ("runs", "ci"),
                ("holds", "user_name"),
            ] {
                c.execute_batch(&format!("ALTER TABLE {table} DROP COLUMN {column}"))
                    .unwrap();
            }
            c.pragma_update(None, "user_version", 1).unwrap();
            id
        };
        let j = Journal::open(dir.path(), clock())
            .unwrap()
            .run_by("ana", "");
        let version: i64 = j
            .conn()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        assert_eq!(j.run(&old).unwrap().unwrap().user, "");
        let id = j.begin_run(&new_run()).unwrap();
        assert_eq!(j.run(&id).unwrap().unwrap().user, "ana");
        j.try_hold(0.1, &[team(1.0)]).unwrap().unwrap();
        let held: String = j
            .conn()
            .query_row("SELECT user_name FROM holds", [], |r| r.get(0))
            .unwrap();
        assert_eq!(held, "ana");
    }

    /// Spilled records reach the ledger once, whoever sends them: two
    /// journals syncing one file at once write each record once, a record
    /// whose first commit landed is not written again, the file is empty
    /// after, and syncing again sends nothing. Their spend then counts.
    #[test]
    fn spilled_records_are_sent_once_whoever_sends_them() {
        let Some(db) = pg::testing::TestDb::create() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let url = db.url.clone().with_spill_dir(dir.path());
        let path = url.spill_path().unwrap().to_path_buf();
        let j = Journal::open_postgres(&url, Clock::Fixed(1_700_000_000_000)).unwrap();
        let id = j.begin_run(&new_run()).unwrap();
        let paid = |item: usize| CallRecord {
            cost_usd: 0.25,
            ..answer(item)
        };
        // As the writer spills a lost group: the records' own SQLite write.
        {
            let conn = spill::open_for_write(&path).unwrap();
            for item in 0..3 {
                let mut write = j.call_write(&id, paid(item));
                write(Tx::Lite(&conn)).unwrap();
            }
        }
        // Item 2's first commit landed though its answer was lost.
        j.record_call(&id, &paid(2)).unwrap();
        assert_eq!(j.unsent().unwrap().records, 3);
        assert!((j.spent_since(0).unwrap() - 0.25).abs() < 1e-12);

        let other =
            Arc::new(Journal::open_postgres(&url, Clock::Fixed(1_700_000_000_000)).unwrap());
        let j = Arc::new(j);
        let syncs: Vec<_> = [Arc::clone(&j), other]
            .into_iter()
            .map(|j| std::thread::spawn(move || j.sync_spill().unwrap()))
            .collect();
        let mut total = spill::Synced::default();
        for s in syncs {
            total.add(s.join().unwrap());
        }
        assert_eq!(
            total,
            spill::Synced {
                sent: 2,
                present: 1
            }
        );
        assert_eq!(j.unsent().unwrap(), spill::Unsent::default());
        assert_eq!(j.finished_calls(&id).unwrap().len(), 3);
        assert!((j.spent_since(0).unwrap() - 0.75).abs() < 1e-12);
        assert!(j.sync_spill().unwrap().is_empty());
        assert!((j.spent_since(0).unwrap() - 0.75).abs() < 1e-12);
    }

    /// A spill file that is not one — garbage, a newer schema, a row with an
    /// unknown outcome, output that is not JSON, a record of a run the
    /// ledger does not hold — is one error naming the file, never a panic;
    /// nothing is half-sent and the file is left as it was.
    #[test]
    fn a_hostile_spill_file_is_a_clear_error() {
        let Some(db) = pg::testing::TestDb::create() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let url = db.url.clone().with_spill_dir(dir.path());
        let path = url.spill_path().unwrap().to_path_buf();
        let j = Journal::open_postgres(&url, Clock::Fixed(1_700_000_000_000)).unwrap();
        let id = j.begin_run(&new_run()).unwrap();
        let fails = |why: &str| {
            let e = j.sync_spill().unwrap_err().to_string();
            assert!(
                e.contains(&path.display().to_string()) && e.contains(why),
                "{why}: {e}"
            );
        };
        std::fs::write(&path, b"not a database, not at all: ".repeat(200)).unwrap();
        fails("not a database");
        std::fs::remove_file(&path).unwrap();

        let spilled = |tamper: &str| {
            let _ = std::fs::remove_file(&path);
            let conn = spill::open_for_write(&path).unwrap();
            let mut write = j.call_write(&id, answer(1));
            write(Tx::Lite(&conn)).unwrap();
            conn.execute_batch(tamper).unwrap();
        };
        spilled("UPDATE calls SET outcome = 'pwned'");
        fails("unknown call outcome `pwned`");
        spilled("UPDATE calls SET output = '{not json'");
        fails("its output is not JSON");
        spilled("UPDATE calls SET attempt = 'x'");
        fails("record 1");
        spilled("UPDATE calls SET run_id = 'r-elsewhere'");
        fails("record 1 (run r-elsewhere)");
        assert_eq!(j.unsent().unwrap().records, 1, "left as it was");
        spilled(&format!("PRAGMA user_version = {}", SCHEMA_VERSION + 1));
        fails("newer tollgate");
        // Nothing of it reached the ledger.
        assert!(j.finished_calls(&id).unwrap().is_empty());
        assert_eq!(j.spent_since(0).unwrap(), 0.0);
    }

    /// A SQLite journal of schema 2 (before the pool endpoint was recorded)
    /// gains the column; a pool's calls are reported by endpoint.
    #[test]
    fn a_sqlite_journal_of_schema_2_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let clock = || Clock::Fixed(1_700_000_000_000);
        let old = {
            let j = Journal::open(dir.path(), clock()).unwrap();
            let id = j.begin_run(&new_run()).unwrap();
            j.record_call(&id, &answer(0)).unwrap();
            let c = j.conn();
            c.execute_batch("ALTER TABLE calls DROP COLUMN endpoint")
                .unwrap();
            c.pragma_update(None, "user_version", 2).unwrap();
            id
        };
        let j = Journal::open(dir.path(), clock()).unwrap();
        let version: i64 = j
            .conn()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        assert_eq!(j.finished_calls(&old).unwrap().len(), 1);
        pool_calls_are_reported_by_endpoint(&j);
    }

    /// A team database of schema 3 gains `calls.endpoint` (4); its calls
    /// stay, and a pool's calls are reported by endpoint.
    #[test]
    fn a_postgres_ledger_of_schema_3_is_migrated() {
        let Some(db) = pg::testing::TestDb::create() else {
            return;
        };
        db.exec(&format!(
            "CREATE TABLE schema_version (version BIGINT NOT NULL);
             {} {} {}
             INSERT INTO schema_version (version) VALUES (1), (2), (3);",
            pg::MIGRATIONS[0],
            pg::MIGRATIONS[1],
            pg::MIGRATIONS[2]
        ));
        let j = Journal::open_postgres(&db.url, Clock::Fixed(1_700_000_000_000)).unwrap();
        pool_calls_are_reported_by_endpoint(&j);
    }

    fn pool_calls_are_reported_by_endpoint(j: &Journal) {
        let id = j.begin_run(&new_run()).unwrap();
        let pooled = |item: usize, endpoint: Option<&str>| CallRecord {
            provider: "gpus".into(),
            cost_usd: 0.5,
            endpoint: endpoint.map(str::to_owned),
            ..answer(item)
        };
        j.record_call(&id, &pooled(1, Some("http://10.0.0.1:8080/v1")))
            .unwrap();
        j.record_call(&id, &pooled(2, Some("http://10.0.0.2:8080/v1")))
            .unwrap();
        j.record_call(&id, &pooled(3, Some("http://10.0.0.1:8080/v1")))
            .unwrap();
        j.record_call(&id, &pooled(4, None)).unwrap();
        let r = report::build(j, None).unwrap();
        let lines: Vec<(&str, u64)> = r
            .by_endpoint
            .iter()
            .map(|l| (l.key.as_str(), l.calls))
            .collect();
        assert_eq!(
            lines,
            [
                ("gpus http://10.0.0.1:8080/v1", 2),
                ("gpus http://10.0.0.2:8080/v1", 1)
            ]
        );
    }

    fn answer(item: usize) -> CallRecord {
        CallRecord {
            step: "a".into(),
            item: Some(item),
            model: "m".into(),
            outcome: AttemptOutcome::Ok,
            output: Some(Value::String(format!("answer {item}"))),
            ..CallRecord::default()
        }
    }

    /// Many writers at once, committed or queued: every record lands, once;
    /// a flush covers every queued one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_are_group_committed_and_all_land() {
        for store in stores() {
            concurrent_writes_on(&store).await;
        }
    }

    async fn concurrent_writes_on(store: &Store) {
        let j = Arc::new(store.open(Clock::Fixed(1_000)));
        let id = j.begin_run(&new_run()).unwrap();
        let mut tasks = Vec::new();
        for t in 0..8 {
            let (j, id) = (Arc::clone(&j), id.clone());
            tasks.push(tokio::spawn(async move {
                for k in 0..50 {
                    let item = t * 1000 + k;
                    if k % 2 == 0 {
                        j.commit_call(&id, answer(item)).await.unwrap();
                    } else {
                        j.queue_call(&id, answer(item)).await.unwrap();
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        j.flush().await.unwrap();
        // Read by another connection (another process would see the same).
        let other = store.open(Clock::Fixed(1_000));
        let done = other.finished_calls(&id).unwrap();
        assert_eq!(done.len(), 400);
        assert_eq!(done[&("a".to_owned(), Some(7049))].output, "answer 7049");
    }

    /// A write that fails fails alone and says why; the writer goes on.
    #[test]
    fn a_failed_write_fails_only_its_sender() {
        for store in stores() {
            a_failed_write_fails_only_its_sender_on(store.open(Clock::Fixed(1_000)));
        }
        a_failed_write_fails_only_its_sender_on(Journal::in_memory(Clock::Fixed(1_000)).unwrap());
    }

    fn a_failed_write_fails_only_its_sender_on(j: Journal) {
        let id = j.begin_run(&new_run()).unwrap();
        // No such run: the foreign key refuses the row.
        let err = j.record_call("r-none", &answer(1)).unwrap_err();
        assert!(
            matches!(err, JournalError::Db(_) | JournalError::Pg(_)),
            "{err:?}"
        );
        assert!(err.to_string().starts_with("run journal: "), "{err}");
        j.record_call(&id, &answer(2)).unwrap();
        assert_eq!(j.finished_calls(&id).unwrap().len(), 1);
    }

    /// A full disk fails the calls waiting on the writer with its error —
    /// no hang, no panic — and a queued write's failure is reported by the
    /// next flush, once.
    #[tokio::test]
    async fn a_full_disk_fails_the_waiting_calls_and_the_flush() {
        let j = Journal::in_memory(Clock::Fixed(1_000)).unwrap();
        let id = j.begin_run(&new_run()).unwrap();
        let pages: i64 = j
            .conn()
            .pragma_query_value(None, "page_count", |r| r.get(0))
            .unwrap();
        j.conn()
            .pragma_update(None, "max_page_count", pages)
            .unwrap();
        let big = |item| CallRecord {
            response: Some("x".repeat(64 * 1024)),
            ..answer(item)
        };
        let err = j.commit_call(&id, big(1)).await.unwrap_err();
        assert!(err.to_string().contains("full"), "{err}");
        j.queue_call(&id, big(2)).await.unwrap();
        let err = j.flush().await.unwrap_err();
        assert!(err.to_string().contains("full"), "{err}");
        j.flush().await.unwrap();
        assert!(j.finished_calls(&id).unwrap().is_empty());
    }

    /// A fresh database is migrated (by several runners at once, as a
    /// team's CI fleet may); a database a newer tollgate wrote is refused,
    /// saying so; a database at this build's version opens as it is.
    #[test]
    fn postgres_migrations_are_versioned() {
        let Some(db) = pg::testing::TestDb::create() else {
            return;
        };
        let opens: Vec<_> = (0..4)
            .map(|_| {
                let url = db.url.clone();
                std::thread::spawn(move || {
                    Journal::open_postgres(&url, Clock::Fixed(1_000)).map(|_| ())
                })
            })
            .collect();
        for o in opens {
            o.join().unwrap().unwrap();
        }
        let j = Journal::open_postgres(&db.url, Clock::Fixed(1_000)).unwrap();
        let id = j.begin_run(&new_run()).unwrap();
        drop(j);
        // Opened again: migrated once, the run still there.
        let j = Journal::open_postgres(&db.url, Clock::Fixed(1_000)).unwrap();
        assert_eq!(j.run(&id).unwrap().unwrap().id, id);
        drop(j);
        db.exec("INSERT INTO schema_version (version) VALUES (7)");
        let err = Journal::open_postgres(&db.url, Clock::Fixed(1_000)).unwrap_err();
        assert!(
            err.to_string().ends_with(&format!(
                "was written by a newer tollgate (schema 7, this one knows {})",
                pg::SCHEMA_VERSION
            )),
            "{err}"
        );
    }

    /// SQLite's version is `PRAGMA user_version` (what every earlier build
    /// checks, so it stays the record): a journal a newer tollgate wrote is
    /// refused, saying so, and left as it was.
    #[test]
    fn a_sqlite_journal_of_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        Journal::open(dir.path(), Clock::Fixed(1_000))
            .unwrap()
            .conn()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let err = Journal::open(dir.path(), Clock::Fixed(1_000)).unwrap_err();
        assert!(
            err.to_string().ends_with(&format!(
                "state.db was written by a newer tollgate (schema {}, this one knows {SCHEMA_VERSION})",
                SCHEMA_VERSION + 1
            )),
            "{err}"
        );
        let again = Journal::open(dir.path(), Clock::Fixed(1_000)).unwrap_err();
        assert!(
            matches!(again, JournalError::NewerSchema { .. }),
            "{again:?}"
        );
    }

    /// A hold is a lease: one nobody renews (its runner died, on whatever
    /// machine) stops counting when it expires; a live one counts.
    #[test]
    fn postgres_holds_of_dead_runners_expire() {
        let Some(db) = pg::testing::TestDb::create() else {
            return;
        };
        let a = Journal::open_postgres(&db.url, Clock::Fixed(1_000)).unwrap();
        // A live runner elsewhere holds $0.5; a dead one left $0.4 whose
        // lease ran out.
        let live = a.try_hold(0.5, &[team(1.0)]).unwrap().unwrap();
        db.exec(
            "INSERT INTO holds (session, amount_usd, created_ms, expires_at)
             VALUES ('dead-runner', 0.4, 0, clock_timestamp() - interval '1 second')",
        );
        let b = Journal::open_postgres(&db.url, Clock::Fixed(1_000)).unwrap();
        // Fits only because the dead runner's hold no longer counts.
        assert!(b.try_hold(0.5, &[team(1.0)]).unwrap().is_ok());
        let c = Journal::open_postgres(&db.url, Clock::Fixed(1_000)).unwrap();
        assert_eq!(c.try_hold(0.1, &[team(1.0)]).unwrap(), Err((0, 0.0, 1.0)));
        a.release_hold(live).unwrap();
        a.flush_blocking().unwrap();
        // A session that ends takes its holds with it.
        drop(b);
        assert!(c.try_hold(1.0, &[team(1.0)]).unwrap().is_ok());
    }

    /// The URL's password is never shown: not in the journal's name, not
    /// in an error.
    #[test]
    fn a_state_url_password_is_never_shown() {
        let url =
            StateUrl::parse("postgres://team:s3cr%40t-pw@127.0.0.1:1/ledger?password=s3cr@t-pw")
                .unwrap();
        assert_eq!(url.display(), "postgres://team@127.0.0.1:1/ledger");
        let err = Journal::open_postgres(&url, Clock::Fixed(1_000)).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("cannot open the run journal postgres://team@127.0.0.1:1/ledger: "),
            "{text}"
        );
        assert!(!text.contains("s3cr"), "{text}");
        let bad = StateUrl::parse("mysql://team:s3cret@host/db")
            .unwrap_err()
            .to_string();
        assert!(
            bad.contains("expected postgres://") && !bad.contains("s3cret"),
            "{bad}"
        );
    }

    /// Opening a connection is bounded (a host that drops packets must not
    /// hold `plan` for minutes), unless the URL chooses its own bound.
    #[test]
    fn a_state_url_connects_within_a_bound() {
        let bound = |u: &str| {
            StateUrl::parse(u)
                .unwrap()
                .config
                .get_connect_timeout()
                .copied()
        };
        assert_eq!(
            bound("postgres://team@db.example/ledger"),
            Some(std::time::Duration::from_secs(10))
        );
        assert_eq!(
            bound("postgres://team@db.example/ledger?connect_timeout=3"),
            Some(std::time::Duration::from_secs(3))
        );
    }
}
