//! The spill: call records the team ledger could not take, kept on this
//! machine until it can.
//!
//! When the writer loses its PostgreSQL connection, the call records of the
//! lost group — paid answers among them — are written at once to a SQLite
//! file in the state folder (`spill-<ledger>.sqlite`, the journal's own
//! schema, so the records' own SQLite write fills it; no `runs` rows: the
//! run is in the ledger since it began there). A record is acknowledged once
//! it is there (`synchronous=FULL`): a kill or an outage that lasts until
//! the process exits loses no paid answer.
//!
//! [`sync_batch`] sends spilled records to the ledger and deletes them from
//! the file only after the ledger's commit. It is idempotent: under one
//! advisory lock (two syncers serialise), a record already in the ledger —
//! the same run, session, step, item, attempt, times, outcome and model —
//! is not written again (a commit whose answer was lost with the connection
//! may have landed). The file stays locked (SQLite's write lock) from the
//! read to the delete, so two processes syncing one file send each record
//! once. The writer sends its spill when its connection is back; every
//! command that opens the ledger (`run`, `report`, `runs`, `ledger sync`)
//! sends what an earlier process left.
//!
//! The file is read as hostile: its version checked, every row bounded and
//! typed, any problem one error naming the file.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};
use serde_json::Value;

use super::pg::PgConn;
use super::schema::{self, SCHEMA_VERSION};
use super::{CallRecord, JournalError, Millis, pg_sql};
use crate::usage::Usage;

/// Records sent to the ledger per transaction (each batch is one worker
/// call, bounded by the ledger's statement bound).
const BATCH: i64 = 64;

/// The bytes of one spilled record's texts (answer, output, error), at
/// most: far above what a provider's response limits let through, and a
/// bound on what a hostile file can make a sync hold.
const MAX_ROW_BYTES: i64 = 32 * 1024 * 1024;

/// The bytes of texts one batch holds, at most (beyond its first record):
/// [`BATCH`] records at [`MAX_ROW_BYTES`] each would be 2 GiB.
const MAX_BATCH_BYTES: i64 = 64 * 1024 * 1024;

/// The spill file for the ledger `display` (its URL without password) in
/// the state folder `dir`: one file per ledger, so records are only ever
/// sent to the ledger they were meant for.
pub(super) fn path_for(dir: &Path, display: &str) -> PathBuf {
    let hash = super::sha256_json(&display);
    dir.join(format!("spill-{}.sqlite", &hash[..12]))
}

fn err(path: &Path, message: impl std::fmt::Display) -> JournalError {
    JournalError::Spill {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Opens (creating) the spill file for writing: the journal's tables,
/// owner-only, every commit on disk before it is acknowledged. Foreign keys
/// stay off: a spilled record's run is in the ledger, not here.
pub(super) fn open_for_write(path: &Path) -> Result<Connection, JournalError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(path, e))?;
    }
    let conn = Connection::open(path).map_err(|e| err(path, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Answers may be confidential, as in the journal.
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
    configure(&conn, path)?;
    schema::create(&conn).map_err(|e| err(path, e))?;
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(|e| err(path, e))?;
    Ok(conn)
}

/// Settings and the version check of every connection to a spill file.
fn configure(conn: &Connection, path: &Path) -> Result<(), JournalError> {
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(|e| err(path, e))?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(|e| err(path, e))?;
    // Off whatever the build's default: a spilled record's run is in the
    // ledger, not in this file.
    conn.pragma_update(None, "foreign_keys", "OFF")
        .map_err(|e| err(path, e))?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| err(path, e))?;
    if version > SCHEMA_VERSION {
        return Err(JournalError::NewerSchema {
            path: path.to_path_buf(),
            found: version,
            known: SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// Opens an existing spill file (never creating one); `None` when there is
/// none.
fn open_existing(path: &Path) -> Result<Option<Connection>, JournalError> {
    if !path.exists() {
        return Ok(None);
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| err(path, e))?;
    configure(&conn, path)?;
    Ok(Some(conn))
}

/// What is in a spill file: records not yet in the ledger and their cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Unsent {
    pub records: u64,
    pub cost_usd: f64,
}

/// What a spill file holds (nothing when there is no file).
pub fn unsent(path: &Path) -> Result<Unsent, JournalError> {
    let Some(conn) = open_existing(path)? else {
        return Ok(Unsent::default());
    };
    conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(MAX(cost_usd, 0)), 0) FROM calls",
        [],
        |r| {
            Ok(Unsent {
                records: r.get::<_, i64>(0)?.max(0) as u64,
                cost_usd: r.get(1)?,
            })
        },
    )
    .map_err(|e| err(path, format!("{e} (not a tollgate spill file?)")))
}

/// What one sync sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Synced {
    /// Records written to the ledger.
    pub sent: u64,
    /// Records the ledger held already (not written again).
    pub present: u64,
}

impl Synced {
    pub fn add(&mut self, other: Synced) {
        self.sent += other.sent;
        self.present += other.present;
    }

    pub fn is_empty(&self) -> bool {
        self.sent == 0 && self.present == 0
    }
}

/// One spilled row: its id in the file, and what the ledger's insert needs.
struct Row {
    id: i64,
    run_id: String,
    session: String,
    finished_ms: Millis,
    record: CallRecord,
}

/// Sends up to [`BATCH`] of the oldest spilled records to the ledger in one
/// transaction and deletes them from the file once it is committed; what
/// it sent, or `None` when the file is empty (or absent).
pub(super) fn sync_batch(pg: &mut PgConn, path: &Path) -> Result<Option<Synced>, JournalError> {
    let Some(mut lite) = open_existing(path)? else {
        return Ok(None);
    };
    // Held from the read to the delete: another process syncing this file
    // waits, then finds the rows gone.
    let tx = lite
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| err(path, e))?;
    let rows = read_rows(&tx, path)?;
    let Some(last) = rows.last().map(|r| r.id) else {
        return Ok(None);
    };
    let mut synced = Synced::default();
    pg.batch("BEGIN")?;
    let sent = (|| {
        pg.batch(&format!(
            "SELECT pg_advisory_xact_lock({})",
            super::pg::SPILL_LOCK
        ))?;
        for row in &rows {
            if pg_sql::call_present(pg, &row.run_id, &row.session, row.finished_ms, &row.record)? {
                synced.present += 1;
            } else {
                pg_sql::insert_call(pg, &row.run_id, &row.session, row.finished_ms, &row.record)
                    .map_err(|e| {
                        err(path, format!("record {} (run {}): {e}", row.id, row.run_id))
                    })?;
                synced.sent += 1;
            }
        }
        pg.batch("COMMIT")
    })();
    if let Err(e) = sent {
        let _ = pg.batch("ROLLBACK");
        return Err(e);
    }
    // The ledger has them: only now do they leave the file. A crash here
    // leaves them to the next sync, which finds them present.
    tx.execute("DELETE FROM calls WHERE id <= ?1", [last])
        .map_err(|e| err(path, e))?;
    tx.commit().map_err(|e| err(path, e))?;
    Ok(Some(synced))
}

/// The oldest [`BATCH`] rows, each checked: bounded, typed, a known outcome.
fn read_rows(conn: &Connection, path: &Path) -> Result<Vec<Row>, JournalError> {
    let bad = |e: rusqlite::Error| err(path, format!("{e} (not a tollgate spill file?)"));
    let mut stmt = conn
        .prepare(
            "SELECT id, run_id, session, step, item, attempt, request_hash, model, provider,
                provider_model, tier, local, started_ms, finished_ms, latency_ms, outcome, error,
                input_tokens, output_tokens, cached_tokens, cache_write_tokens, reasoning_tokens,
                cache_write_1h_tokens, cost_usd, list_cost_usd, flagship_cost_usd, estimate_usd,
                saved_usd, batch, from_cache, cacheable, response, output, prompt_hash, usage_flag,
                cascade_rule, escalate_to, escalated_from, endpoint,
                COALESCE(length(CAST(response AS BLOB)), 0) + COALESCE(length(CAST(output AS BLOB)), 0)
                    + COALESCE(length(CAST(error AS BLOB)), 0)
             FROM calls ORDER BY id LIMIT ?1",
        )
        .map_err(bad)?;
    let mut rows = stmt.query(params![BATCH]).map_err(bad)?;
    let mut out = Vec::new();
    let mut held: i64 = 0;
    while let Some(r) = rows.next().map_err(bad)? {
        let id: i64 = r.get(0).map_err(bad)?;
        let at = |e: rusqlite::Error| err(path, format!("record {id}: {e}"));
        let size: i64 = r.get(39).map_err(at)?;
        if size > MAX_ROW_BYTES {
            return Err(err(
                path,
                format!("record {id} holds {size} bytes of text, more than a call record can"),
            ));
        }
        // Large records go a few at a time (the rest in the next batch).
        held = held.saturating_add(size.max(0));
        if held > MAX_BATCH_BYTES && !out.is_empty() {
            break;
        }
        let n = |i: usize| -> Result<u64, JournalError> {
            Ok(r.get::<_, i64>(i).map_err(at)?.max(0) as u64)
        };
        let outcome: String = r.get(15).map_err(at)?;
        let outcome = outcome
            .parse()
            .map_err(|e| err(path, format!("record {id}: {e}")))?;
        let output = r
            .get::<_, Option<String>>(32)
            .map_err(at)?
            .map(|o| serde_json::from_str::<Value>(&o))
            .transpose()
            .map_err(|e| err(path, format!("record {id}: its output is not JSON: {e}")))?;
        let item: Option<i64> = r.get(4).map_err(at)?;
        let attempt: i64 = r.get(5).map_err(at)?;
        let record = CallRecord {
            step: r.get(3).map_err(at)?,
            item: item.map(|i| i.max(0) as usize),
            attempt: u32::try_from(attempt)
                .map_err(|_| err(path, format!("record {id}: attempt {attempt}")))?,
            request_hash: r.get(6).map_err(at)?,
            model: r.get(7).map_err(at)?,
            provider: r.get(8).map_err(at)?,
            provider_model: r.get(9).map_err(at)?,
            tier: r.get(10).map_err(at)?,
            local: r.get(11).map_err(at)?,
            started_ms: r.get(12).map_err(at)?,
            latency_ms: n(14)?,
            outcome,
            error: r.get(16).map_err(at)?,
            usage: Usage {
                input_tokens: n(17)?,
                output_tokens: n(18)?,
                cached_input_tokens: n(19)?,
                cache_write_tokens: n(20)?,
                reasoning_tokens: n(21)?,
                cache_write_1h_tokens: n(22)?,
            },
            cost_usd: r.get(23).map_err(at)?,
            list_cost_usd: r.get(24).map_err(at)?,
            flagship_cost_usd: r.get(25).map_err(at)?,
            estimate_usd: r.get(26).map_err(at)?,
            saved_usd: r.get(27).map_err(at)?,
            batch: r.get(28).map_err(at)?,
            from_cache: r.get(29).map_err(at)?,
            cacheable: r.get(30).map_err(at)?,
            response: r.get(31).map_err(at)?,
            output,
            prompt_hash: r.get(33).map_err(at)?,
            usage_flag: r.get(34).map_err(at)?,
            cascade_rule: r.get(35).map_err(at)?,
            escalate_to: r.get(36).map_err(at)?,
            escalated_from: r.get(37).map_err(at)?,
            endpoint: r.get(38).map_err(at)?,
        };
        // Money goes into every machine's budgets and reports once sent:
        // only finite figures, and no negative spend.
        let money = [
            record.cost_usd,
            record.list_cost_usd,
            record.flagship_cost_usd,
            record.estimate_usd,
            record.saved_usd,
        ];
        if money.iter().any(|m| !m.is_finite()) || record.cost_usd < 0.0 {
            return Err(err(
                path,
                format!("record {id}: its cost is not a finite, non-negative number"),
            ));
        }
        out.push(Row {
            id,
            run_id: r.get(1).map_err(at)?,
            session: r.get(2).map_err(at)?,
            finished_ms: r.get(13).map_err(at)?,
            record,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three records of 30 MiB each: a batch takes two (60 MiB) and leaves
    /// the third to the next, rather than holding all of them at once.
    #[test]
    fn large_records_are_read_a_few_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spill-test.sqlite");
        let conn = open_for_write(&path).unwrap();
        let big = "x".repeat(30 * 1024 * 1024);
        for attempt in 0..3 {
            conn.execute(
                "INSERT INTO calls (run_id, session, step, attempt, model, provider, provider_model,
                    tier, local, started_ms, finished_ms, latency_ms, outcome, response)
                 VALUES ('r', 's', 'step', ?1, 'm', 'p', 'pm', 'local', 1, 0, 0, 0, 'ok', ?2)",
                params![attempt, big],
            )
            .unwrap();
        }
        let rows = read_rows(&conn, &path).unwrap();
        assert_eq!(rows.len(), 2);
        conn.execute("DELETE FROM calls WHERE id <= ?1", [rows[1].id])
            .unwrap();
        assert_eq!(read_rows(&conn, &path).unwrap().len(), 1);
    }

    /// A record whose money is negative or infinite is refused, naming it,
    /// rather than sent into the team's budgets and reports.
    #[test]
    fn bad_money_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (column, value) in [("cost_usd", -1.0), ("saved_usd", f64::INFINITY)] {
            let path = dir.path().join(format!("spill-{column}.sqlite"));
            let conn = open_for_write(&path).unwrap();
            conn.execute(
                &format!(
                    "INSERT INTO calls (run_id, session, step, attempt, model, provider, provider_model,
                        tier, local, started_ms, finished_ms, latency_ms, outcome, {column})
                     VALUES ('r', 's', 'step', 0, 'm', 'p', 'pm', 'cloud', 0, 0, 0, 0, 'ok', ?1)"
                ),
                params![value],
            )
            .unwrap();
            let e = read_rows(&conn, &path).err().expect("refused").to_string();
            assert!(e.contains("record 1: its cost is not a finite"), "{e}");
        }
    }
}
