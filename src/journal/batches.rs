//! The batch ledger: where submitted provider batches are remembered
//! between runs, so an interrupted run resumes polling a batch rather than
//! paying for it twice.
//!
//! The trait is defined here, beside its one durable implementation (the
//! journal's `batches` table), and the executor (`run::batch`) depends only
//! on the trait: it is handed an `Arc<dyn BatchLedger>`, and the journal
//! never needs to know the executor.

use std::fmt;

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::Journal;
use super::writer::Tx;

/// A batch submitted to a provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRef {
    /// The policy's provider name.
    pub provider: String,
    /// The provider's batch id (`batch_…`, `msgbatch_…`).
    pub id: String,
}

/// Where submitted batches are remembered between runs, so that an
/// interrupted run resumes polling rather than paying for a batch twice.
/// `key` identifies the batch's requests (the executor's
/// `run::batch_key`: a hash of the provider and every request).
pub trait BatchLedger: Send + Sync + fmt::Debug {
    fn submitted(&self, key: &str) -> Option<BatchRef>;
    fn record(&self, key: &str, batch: &BatchRef) -> std::io::Result<()>;
    /// The batch's results were fetched: nothing left to resume.
    fn finished(&self, key: &str) -> std::io::Result<()>;
}

impl fmt::Display for BatchRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} batch {}", self.provider, self.id)
    }
}

/// Submitted batches live in the journal, beside the calls they answer, so
/// concurrent runs in one project see each other's and a crash between
/// submitting and fetching never loses a paid batch.
impl BatchLedger for Journal {
    fn submitted(&self, key: &str) -> Option<BatchRef> {
        let owned = key.to_owned();
        self.read(
            |conn| Ok(lite_submitted(conn, key)),
            move |c, _| super::pg_sql::batch_submitted(c, &owned),
        )
        .ok()
        .flatten()
    }

    fn record(&self, key: &str, batch: &BatchRef) -> std::io::Result<()> {
        let (key, batch, now) = (key.to_owned(), batch.clone(), self.now());
        self.write(move |tx| {
            let tx = match tx {
                Tx::Lite(tx) => tx,
                Tx::Pg(c) => return super::pg_sql::batch_record(c, &key, &batch, now),
            };
            tx.execute(
                "INSERT OR REPLACE INTO batches (key, provider, batch_id, submitted_ms, finished_ms)
                 VALUES (?1, ?2, ?3, ?4, NULL)",
                params![key, batch.provider, batch.id, now],
            )?;
            Ok(())
        })
        .map_err(std::io::Error::other)
    }

    /// Through the writer, after the batch's answers queued before it: a
    /// batch is never marked fetched before its answers are durable.
    fn finished(&self, key: &str) -> std::io::Result<()> {
        let (key, now) = (key.to_owned(), self.now());
        self.write(move |tx| {
            let tx = match tx {
                Tx::Lite(tx) => tx,
                Tx::Pg(c) => return super::pg_sql::batch_finished(c, &key, now),
            };
            tx.execute(
                "UPDATE batches SET finished_ms = ?2 WHERE key = ?1",
                params![key, now],
            )?;
            Ok(())
        })
        .map_err(std::io::Error::other)
    }
}

/// The SQLite side of [`BatchLedger::submitted`].
fn lite_submitted(conn: &rusqlite::Connection, key: &str) -> Option<BatchRef> {
    conn.query_row(
        "SELECT provider, batch_id FROM batches WHERE key = ?1 AND finished_ms IS NULL",
        [key],
        |r| {
            Ok(BatchRef {
                provider: r.get(0)?,
                id: r.get(1)?,
            })
        },
    )
    .optional()
    .ok()
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Clock;

    #[test]
    fn the_journal_remembers_batches_across_runs_and_forgets_finished_ones() {
        let dir = tempfile::tempdir().unwrap();
        let batch = BatchRef {
            provider: "openai".into(),
            id: "batch_1".into(),
        };
        Journal::open(dir.path(), Clock::Fixed(1_000))
            .unwrap()
            .record("k1", &batch)
            .unwrap();
        // A later run (a new process) finds it.
        let later = Journal::open(dir.path(), Clock::Fixed(2_000)).unwrap();
        assert_eq!(later.submitted("k1"), Some(batch));
        assert_eq!(later.submitted("k2"), None);
        later.finished("k1").unwrap();
        assert_eq!(
            Journal::open(dir.path(), Clock::Fixed(3_000))
                .unwrap()
                .submitted("k1"),
            None
        );
    }
}
