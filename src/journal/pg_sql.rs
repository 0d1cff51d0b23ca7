//! The journal's statements in PostgreSQL's dialect, one function per
//! statement of the SQLite journal (`$n` parameters, `GREATEST` for
//! SQLite's two-argument `MAX`, real booleans, `BIGINT` everywhere an
//! integer is kept). Each runs on a connection a journal thread owns
//! (`pg::Worker` or the writer).

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::pg::{PgConn, get};
use super::who::clean;
use super::{
    BatchRef, CachedAnswer, CallRecord, EscalatedCall, FinishedCall, JournalError, Millis, NewRun,
    RunRow, format_time, sha256_text,
};
use crate::process::{own_start, process_alive_since};
use crate::usage::Usage;

pub(super) fn begin_run(
    c: &mut PgConn,
    run: &NewRun,
    stamp: &str,
    now: Millis,
    who: &super::who::Who,
) -> Result<String, JournalError> {
    let inputs_hash = sha256_text(&run.inputs_json);
    let inputs = &run.inputs_json;
    let steps_total = run.steps.len() as i64;
    let pid = i64::from(std::process::id());
    let pid_start = own_start();
    // Another machine may pick the same id at the same second: the insert
    // that loses tries another.
    let id = loop {
        let id = format!("r-{stamp}-{:04x}", fastrand::u16(..));
        let inserted = c.execute(
            "INSERT INTO runs (id, workflow, workflow_path, workflow_hash, policy, policy_path,
                policy_hash, inputs_hash, inputs, started_ms, status, steps_total, estimate_usd,
                estimate_max_usd, pid, pid_start, machine, user_name, ci, lease_expires)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'running', $11, $12, $13, $14, $15, $16,
                $17, $18, clock_timestamp() + make_interval(secs => $19))
             ON CONFLICT (id) DO NOTHING",
            &[
                &id,
                &run.workflow,
                &run.workflow_path,
                &run.workflow_hash,
                &run.policy,
                &run.policy_path,
                &run.policy_hash,
                &inputs_hash,
                &inputs,
                &now,
                &steps_total,
                &run.estimate_usd,
                &run.estimate_max_usd,
                &pid,
                &pid_start,
                &who.machine,
                &who.user,
                &who.ci,
                &(super::pg::LEASE_SECONDS as f64),
            ],
        )?;
        if inserted == 1 {
            break id;
        }
    };
    for s in &run.steps {
        c.execute(
            "INSERT INTO steps (run_id, step, status, planned_model, planned_calls, estimate_usd,
                estimate_max_usd, flagship_estimate_usd, context_tokens_before,
                context_tokens_after, context_saved_usd)
             VALUES ($1, $2, 'pending', $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                &id,
                &s.id,
                &s.model,
                &(s.calls as i64),
                &s.estimate_usd,
                &s.estimate_max_usd,
                &s.flagship_estimate_usd,
                &s.context.as_ref().map_or(0, |c| c.tokens_before as i64),
                &s.context.as_ref().map_or(0, |c| c.tokens_after as i64),
                &s.context.as_ref().map_or(0.0, |c| c.saved_usd),
            ],
        )?;
    }
    Ok(id)
}

/// Takes a run over — only if it is still as seen: not running, or
/// running in a process that is gone (on this machine, as its pid says; on
/// another, as its lapsed lease says). Two resumes at once: one wins.
pub(super) fn reopen_run(
    c: &mut PgConn,
    id: &str,
    seen_pid: u32,
    seen_machine: &str,
    machine: &str,
) -> Result<u64, JournalError> {
    c.execute(
        "UPDATE runs SET status = 'running', finished_ms = NULL, pid = $2, pid_start = $4,
                sessions = sessions + 1, machine = $5,
                lease_expires = clock_timestamp() + make_interval(secs => $7)
             WHERE id = $1 AND (status != 'running'
                OR (pid = $3 AND machine = $6
                    AND (machine = $5 OR lease_expires < clock_timestamp())))",
        &[
            &id,
            &i64::from(std::process::id()),
            &i64::from(seen_pid),
            &own_start(),
            &machine,
            &seen_machine,
            &(super::pg::LEASE_SECONDS as f64),
        ],
    )
}

pub(super) fn finish_run(
    c: &mut PgConn,
    id: &str,
    status: &str,
    now: Millis,
) -> Result<(), JournalError> {
    c.execute(
        "UPDATE runs SET status = $2, finished_ms = $3,
            cost_usd = (SELECT COALESCE(SUM(GREATEST(cost_usd, 0)), 0) FROM calls WHERE run_id = $1)
         WHERE id = $1",
        &[&id, &status, &now],
    )?;
    Ok(())
}

pub(super) fn step_status(
    c: &mut PgConn,
    run_id: &str,
    step: &str,
    status: &str,
    now: Millis,
) -> Result<(), JournalError> {
    c.execute(
        "UPDATE steps SET status = $3, finished_ms = $4 WHERE run_id = $1 AND step = $2",
        &[&run_id, &step, &status, &now],
    )?;
    Ok(())
}

pub(super) fn insert_call(
    c: &mut PgConn,
    run_id: &str,
    session: &str,
    now: Millis,
    r: &CallRecord,
) -> Result<(), JournalError> {
    let output = r.output.as_ref().map(Value::to_string);
    let u = &r.usage;
    c.execute(
        "INSERT INTO calls (run_id, session, step, item, attempt, request_hash, model, provider,
            provider_model, tier, local, started_ms, finished_ms, latency_ms, outcome, error,
            input_tokens, output_tokens, cached_tokens, cache_write_tokens, reasoning_tokens,
            cache_write_1h_tokens, cost_usd, list_cost_usd, flagship_cost_usd, estimate_usd,
            saved_usd, batch, from_cache, cacheable, response, output, prompt_hash, usage_flag,
            cascade_rule, escalate_to, escalated_from, endpoint)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
            $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33, $34,
            $35, $36, $37, $38)",
        &[
            &run_id,
            &session,
            &r.step,
            &r.item.map(|i| i as i64),
            &i64::from(r.attempt),
            &r.request_hash,
            &r.model,
            &r.provider,
            &r.provider_model,
            &r.tier,
            &r.local,
            &r.started_ms,
            &now,
            &(r.latency_ms as i64),
            &r.outcome.as_str(),
            &r.error,
            &(u.input_tokens as i64),
            &(u.output_tokens as i64),
            &(u.cached_input_tokens as i64),
            &(u.cache_write_tokens as i64),
            &(u.reasoning_tokens as i64),
            &(u.cache_write_1h_tokens as i64),
            &r.cost_usd,
            &r.list_cost_usd,
            &r.flagship_cost_usd,
            &r.estimate_usd,
            &r.saved_usd,
            &r.batch,
            &r.from_cache,
            &r.cacheable,
            &r.response,
            &output,
            &r.prompt_hash,
            &r.usage_flag,
            &r.cascade_rule,
            &r.escalate_to,
            &r.escalated_from,
            &r.endpoint,
        ],
    )?;
    Ok(())
}

/// Whether the ledger holds this call record already (a spilled record
/// whose first commit landed though its answer was lost with the
/// connection, or one another syncer sent): the same run, session, step,
/// item, attempt, times, outcome and model. A session is one process, so
/// two different attempts never share all of these.
pub(super) fn call_present(
    c: &mut PgConn,
    run_id: &str,
    session: &str,
    finished_ms: Millis,
    r: &CallRecord,
) -> Result<bool, JournalError> {
    Ok(c.query_opt(
        "SELECT 1 FROM calls WHERE run_id = $1 AND session = $2 AND step = $3
            AND item IS NOT DISTINCT FROM $4 AND attempt = $5 AND started_ms = $6
            AND finished_ms = $7 AND outcome = $8 AND model = $9 LIMIT 1",
        &[
            &run_id,
            &session,
            &r.step,
            &r.item.map(|i| i as i64),
            &i64::from(r.attempt),
            &r.started_ms,
            &finished_ms,
            &r.outcome.as_str(),
            &r.model,
        ],
    )?
    .is_some())
}

/// Six usage columns in `Usage` field order, from `first` on.
fn usage_from(r: &postgres::Row, first: usize) -> Result<Usage, JournalError> {
    let n = |i: usize| -> Result<u64, JournalError> { Ok(get::<i64>(r, first + i)?.max(0) as u64) };
    Ok(Usage {
        input_tokens: n(0)?,
        output_tokens: n(1)?,
        cached_input_tokens: n(2)?,
        cache_write_tokens: n(3)?,
        reasoning_tokens: n(4)?,
        cache_write_1h_tokens: n(5)?,
    })
}

pub(super) type Finished = HashMap<(String, Option<usize>), FinishedCall>;

pub(super) fn finished_calls(c: &mut PgConn, run_id: &str) -> Result<Finished, JournalError> {
    let rows = c.query(
        "SELECT step, item, model, output, input_tokens, output_tokens, cached_tokens,
            cache_write_tokens, reasoning_tokens, cache_write_1h_tokens, cost_usd, prompt_hash
         FROM calls WHERE run_id = $1 AND output IS NOT NULL ORDER BY id",
        &[&run_id],
    )?;
    let mut out = HashMap::with_capacity(rows.len());
    for r in &rows {
        let item: Option<i64> = get(r, 1)?;
        let output: String = get(r, 3)?;
        out.insert(
            (get(r, 0)?, item.map(|i| i as usize)),
            FinishedCall {
                prompt_hash: get(r, 11)?,
                model: get(r, 2)?,
                output: serde_json::from_str(&output).unwrap_or(Value::Null),
                usage: usage_from(r, 4)?,
                cost_usd: get(r, 10)?,
            },
        );
    }
    Ok(out)
}

pub(super) type Escalated = HashMap<(String, Option<usize>), EscalatedCall>;

pub(super) fn escalated_calls(c: &mut PgConn, run_id: &str) -> Result<Escalated, JournalError> {
    let rows = c.query(
        "SELECT step, item, model, escalate_to, error, prompt_hash, cost_usd
         FROM calls WHERE run_id = $1 AND outcome = 'escalated' ORDER BY id",
        &[&run_id],
    )?;
    let mut out = HashMap::with_capacity(rows.len());
    for r in &rows {
        let item: Option<i64> = get(r, 1)?;
        out.insert(
            (get(r, 0)?, item.map(|i| i as usize)),
            EscalatedCall {
                model: get(r, 2)?,
                to: get::<Option<String>>(r, 3)?.unwrap_or_default(),
                reason: get::<Option<String>>(r, 4)?.unwrap_or_default(),
                prompt_hash: get(r, 5)?,
                cost_usd: get(r, 6)?,
            },
        );
    }
    Ok(out)
}

/// (escalated, first answers) per cascade rule of `policy` since `since`;
/// `COUNT(*) FILTER` where SQLite sums booleans.
pub(super) fn escalation_history(
    c: &mut PgConn,
    policy: &str,
    since: Millis,
) -> Result<BTreeMap<String, (u64, u64)>, JournalError> {
    c.query(
        "SELECT c.cascade_rule, COUNT(*) FILTER (WHERE c.outcome = 'escalated'), COUNT(*)
         FROM calls c JOIN runs r ON r.id = c.run_id
         WHERE c.cascade_rule IS NOT NULL AND c.escalated_from IS NULL
           AND r.policy = $1 AND c.finished_ms >= $2
           AND c.outcome IN ('ok', 'escalated', 'cached', 'truncated')
         GROUP BY c.cascade_rule",
        &[&policy, &since],
    )?
    .iter()
    .map(|r| {
        Ok((
            get(r, 0)?,
            (
                get::<i64>(r, 1)?.max(0) as u64,
                get::<i64>(r, 2)?.max(0) as u64,
            ),
        ))
    })
    .collect()
}

pub(super) fn cached_answer(
    c: &mut PgConn,
    request_hash: &str,
    not_before: Millis,
) -> Result<Option<CachedAnswer>, JournalError> {
    let Some(r) = c.query_opt(
        "SELECT response, input_tokens, output_tokens, cached_tokens, cache_write_tokens,
            reasoning_tokens, cache_write_1h_tokens, cost_usd, run_id
         FROM calls
         WHERE request_hash = $1 AND cacheable AND NOT from_cache AND finished_ms >= $2
         ORDER BY finished_ms DESC, id DESC LIMIT 1",
        &[&request_hash, &not_before],
    )?
    else {
        return Ok(None);
    };
    Ok(Some(CachedAnswer {
        text: get(&r, 0)?,
        usage: usage_from(&r, 1)?,
        cost_usd: get(&r, 7)?,
        run_id: get(&r, 8)?,
    }))
}

pub(super) fn release_hold(c: &mut PgConn, id: i64) -> Result<(), JournalError> {
    c.execute("DELETE FROM holds WHERE id = $1", &[&id])?;
    Ok(())
}

pub(super) fn spent_since(c: &mut PgConn, since: Millis) -> Result<f64, JournalError> {
    let r = c.query_one(
        "SELECT COALESCE(SUM(GREATEST(cost_usd, 0)), 0) FROM calls WHERE finished_ms >= $1",
        &[&since],
    )?;
    get(&r, 0)
}

pub(super) fn run_cost(c: &mut PgConn, run_id: &str) -> Result<f64, JournalError> {
    let r = c.query_one(
        "SELECT COALESCE(SUM(GREATEST(cost_usd, 0)), 0) FROM calls WHERE run_id = $1",
        &[&run_id],
    )?;
    get(&r, 0)
}

const RUN_COLUMNS: &str =
    "r.id, r.workflow, r.workflow_path, r.workflow_hash, r.policy, r.policy_path,
    r.policy_hash, r.inputs, r.started_ms, r.finished_ms, r.status, r.steps_total,
    (SELECT COUNT(*) FROM steps s WHERE s.run_id = r.id AND s.status IN ('succeeded', 'skipped')),
    (SELECT COALESCE(SUM(GREATEST(cost_usd, 0)), 0) FROM calls c WHERE c.run_id = r.id),
    r.estimate_usd, r.pid, r.sessions, r.pid_start, r.machine, r.user_name, r.ci,
    COALESCE(r.lease_expires < clock_timestamp(), FALSE)
    FROM runs r";

/// A run's row; "running" in a process of this machine that is gone, or on
/// another machine with a lapsed lease, reads "interrupted".
fn run_row(r: &postgres::Row, machine: &str) -> Result<RunRow, JournalError> {
    let started_ms: Millis = get(r, 8)?;
    let mut status: String = get(r, 10)?;
    let pid = get::<i64>(r, 15)? as u32;
    let on: String = get(r, 18)?;
    let gone = if on == machine {
        !process_alive_since(pid, get(r, 17)?)
    } else {
        // Another machine's process cannot be checked from here: its lease
        // says whether it still lives.
        get::<bool>(r, 21)?
    };
    if status == "running" && gone {
        status = "interrupted".to_owned();
    }
    let inputs: String = get(r, 7)?;
    Ok(RunRow {
        id: get(r, 0)?,
        workflow: get(r, 1)?,
        workflow_path: get(r, 2)?,
        workflow_hash: get(r, 3)?,
        policy: get(r, 4)?,
        policy_path: get(r, 5)?,
        policy_hash: get(r, 6)?,
        inputs: serde_json::from_str(&inputs).unwrap_or(Value::Null),
        started: format_time(started_ms),
        started_ms,
        finished_ms: get(r, 9)?,
        status,
        steps_total: get::<i64>(r, 11)? as u64,
        steps_done: get::<i64>(r, 12)? as u64,
        cost_usd: get(r, 13)?,
        estimate_usd: get(r, 14)?,
        pid,
        sessions: get::<i64>(r, 16)? as u32,
        user: clean(&get::<String>(r, 19)?),
        machine: clean(&on),
        ci: clean(&get::<String>(r, 20)?),
    })
}

pub(super) fn run(c: &mut PgConn, id: &str, machine: &str) -> Result<Option<RunRow>, JournalError> {
    // Statements are cached by their text: both forms are built once.
    static LAST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    static BY_ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let row = if id == "last" {
        let sql = LAST.get_or_init(|| {
            format!("SELECT {RUN_COLUMNS} ORDER BY r.started_ms DESC, r.seq DESC LIMIT 1")
        });
        c.query_opt(sql, &[])?
    } else {
        let sql = BY_ID.get_or_init(|| format!("SELECT {RUN_COLUMNS} WHERE r.id = $1"));
        c.query_opt(sql, &[&id])?
    };
    row.map(|r| run_row(&r, machine)).transpose()
}

pub(super) fn runs(
    c: &mut PgConn,
    limit: usize,
    machine: &str,
) -> Result<Vec<RunRow>, JournalError> {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sql = SQL.get_or_init(|| {
        format!("SELECT {RUN_COLUMNS} ORDER BY r.started_ms DESC, r.seq DESC LIMIT $1")
    });
    c.query(sql, &[&(limit.min(i64::MAX as usize) as i64)])?
        .iter()
        .map(|r| run_row(r, machine))
        .collect()
}

/// `report`'s three reads: every call finished at or after `from` (in
/// `report::CallRow` column order), the plans' estimates of the runs
/// started then, and how many runs started.
pub(super) fn report_calls(
    c: &mut PgConn,
    from: Millis,
) -> Result<Vec<postgres::Row>, JournalError> {
    c.query(
        "SELECT c.finished_ms, r.workflow, c.step, c.model, c.provider_model, c.tier, c.from_cache,
                c.outcome, c.input_tokens, c.output_tokens, c.cost_usd, c.list_cost_usd,
                c.flagship_cost_usd, c.saved_usd, c.batch, c.usage_flag, r.user_name, r.machine,
                r.ci, c.provider, c.endpoint
             FROM calls c JOIN runs r ON r.id = c.run_id
             WHERE c.finished_ms >= $1 ORDER BY c.id",
        &[&from],
    )
}

pub(super) fn report_estimates(
    c: &mut PgConn,
    from: Millis,
) -> Result<Vec<super::report::Estimate>, JournalError> {
    c.query(
        "SELECT r.workflow, s.step, s.estimate_usd, s.status = 'succeeded',
                s.context_tokens_before - s.context_tokens_after, s.context_saved_usd
             FROM steps s JOIN runs r ON r.id = s.run_id
             WHERE r.started_ms >= $1",
        &[&from],
    )?
    .iter()
    .map(|r| {
        Ok((
            get(r, 0)?,
            get(r, 1)?,
            get(r, 2)?,
            get(r, 3)?,
            get(r, 4)?,
            get(r, 5)?,
        ))
    })
    .collect()
}

/// `report`'s cascade sums (see `report::cascades`): `COUNT(*) FILTER`
/// where SQLite sums booleans, `GREATEST` for its scalar `MAX`.
pub(super) fn report_cascades(
    c: &mut PgConn,
    from: Millis,
) -> Result<Vec<super::report::CascadeSums>, JournalError> {
    c.query(
        "SELECT r.policy || '/' || c.cascade_rule,
                COUNT(*) FILTER (WHERE c.escalated_from IS NULL
                    AND c.outcome IN ('ok', 'escalated', 'cached', 'truncated')),
                COUNT(*) FILTER (WHERE c.escalated_from IS NULL AND c.outcome = 'escalated'),
                COALESCE(SUM(GREATEST(c.cost_usd, 0)) FILTER (WHERE c.escalated_from IS NULL), 0),
                COALESCE(SUM(GREATEST(c.cost_usd, 0)) FILTER (WHERE c.escalated_from IS NOT NULL), 0),
                COUNT(*) FILTER (WHERE c.escalated_from IS NOT NULL
                    AND c.outcome IN ('ok', 'cached', 'truncated')),
                COALESCE(SUM(c.saved_usd) FILTER (WHERE c.escalated_from IS NOT NULL AND c.from_cache), 0)
             FROM calls c JOIN runs r ON r.id = c.run_id
             WHERE c.cascade_rule IS NOT NULL AND c.finished_ms >= $1
             GROUP BY 1",
        &[&from],
    )?
    .iter()
    .map(|r| {
        Ok(super::report::CascadeSums {
            key: get(r, 0)?,
            first_answers: get(r, 1)?,
            escalated: get(r, 2)?,
            first_cost: get(r, 3)?,
            escalated_cost: get(r, 4)?,
            answered: get(r, 5)?,
            cached_saved: get(r, 6)?,
        })
    })
    .collect()
}

pub(super) fn runs_since(c: &mut PgConn, from: Millis) -> Result<i64, JournalError> {
    let r = c.query_one("SELECT COUNT(*) FROM runs WHERE started_ms >= $1", &[&from])?;
    get(&r, 0)
}

pub(super) fn batch_submitted(c: &mut PgConn, key: &str) -> Result<Option<BatchRef>, JournalError> {
    c.query_opt(
        "SELECT provider, batch_id FROM batches WHERE key = $1 AND finished_ms IS NULL",
        &[&key],
    )?
    .map(|r| {
        Ok(BatchRef {
            provider: get(&r, 0)?,
            id: get(&r, 1)?,
        })
    })
    .transpose()
}

pub(super) fn batch_record(
    c: &mut PgConn,
    key: &str,
    batch: &BatchRef,
    now: Millis,
) -> Result<(), JournalError> {
    c.execute(
        "INSERT INTO batches (key, provider, batch_id, submitted_ms, finished_ms)
         VALUES ($1, $2, $3, $4, NULL)
         ON CONFLICT (key) DO UPDATE SET provider = EXCLUDED.provider,
            batch_id = EXCLUDED.batch_id, submitted_ms = EXCLUDED.submitted_ms, finished_ms = NULL",
        &[&key, &batch.provider, &batch.id, &now],
    )?;
    Ok(())
}

pub(super) fn batch_finished(c: &mut PgConn, key: &str, now: Millis) -> Result<(), JournalError> {
    c.execute(
        "UPDATE batches SET finished_ms = $2 WHERE key = $1",
        &[&key, &now],
    )?;
    Ok(())
}
