//! The journal's tables (schema 1), the columns added to schema 1 after
//! its first journals were written, and schema 2's (who ran each run, whose
//! each hold is), which opening a journal adds when they are missing
//! (`CREATE TABLE IF NOT EXISTS` does not add them).

use rusqlite::Connection;

/// The schema version this build writes (`PRAGMA user_version`).
///
/// 2: `runs.user_name`, `runs.machine`, `runs.ci` and `holds.user_name`
/// (`report --by`, per-user budgets). A build of schema 1 refuses a schema-2
/// journal rather than write runs nobody is recorded as having run.
///
/// 3: `calls.endpoint` (the pool endpoint that answered). A build of schema
/// 2 refuses it rather than drop the column's meaning.
pub(super) const SCHEMA_VERSION: i64 = 3;

pub(super) const SCHEMA: &str = r#"
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
    sessions        INTEGER NOT NULL DEFAULT 1,
    -- Who ran it (schema 2; see journal::who).
    user_name       TEXT NOT NULL DEFAULT '',
    machine         TEXT NOT NULL DEFAULT '',
    ci              TEXT NOT NULL DEFAULT ''
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
    -- Context management (the plan's figures): input tokens without and
    -- with it, and the expected saving on the step's model.
    context_tokens_before INTEGER NOT NULL DEFAULT 0,
    context_tokens_after  INTEGER NOT NULL DEFAULT 0,
    context_saved_usd     REAL NOT NULL DEFAULT 0,
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
    usage_flag      TEXT,
    -- Cascades: the rule on a first call's rows; on an `escalated` row, the
    -- target; on the escalated call's rows, the model it escalated from.
    cascade_rule    TEXT,
    escalate_to     TEXT,
    escalated_from  TEXT,
    -- A pool's call: the endpoint that answered (schema 3).
    endpoint        TEXT
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
    created_ms      INTEGER NOT NULL,
    user_name       TEXT NOT NULL DEFAULT ''
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

/// Creates what is missing: the tables, and the columns schema 1 gained
/// after its first journals were written.
pub(super) fn create(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(SCHEMA)?;
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
        ("calls", "cascade_rule", "TEXT"),
        ("calls", "escalate_to", "TEXT"),
        ("calls", "escalated_from", "TEXT"),
        (
            "steps",
            "context_tokens_before",
            "INTEGER NOT NULL DEFAULT 0",
        ),
        (
            "steps",
            "context_tokens_after",
            "INTEGER NOT NULL DEFAULT 0",
        ),
        ("steps", "context_saved_usd", "REAL NOT NULL DEFAULT 0"),
        // Schema 2: who ran it ("" for runs journaled before).
        ("runs", "user_name", "TEXT NOT NULL DEFAULT ''"),
        ("runs", "machine", "TEXT NOT NULL DEFAULT ''"),
        ("runs", "ci", "TEXT NOT NULL DEFAULT ''"),
        ("holds", "user_name", "TEXT NOT NULL DEFAULT ''"),
        // Schema 3: the pool endpoint that answered.
        ("calls", "endpoint", "TEXT"),
    ] {
        let present: bool = conn.query_row(
            &format!("SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE name = ?1"),
            [column],
            |r| r.get::<_, i64>(0),
        )? > 0;
        if !present {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))?;
        }
    }
    Ok(())
}
