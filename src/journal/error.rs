//! Why a journal operation failed: the journal layer's one error type.
//!
//! Every message is written for the user (the CLI shows it as a diagnostic,
//! the executor as a `run journal` warning), and each is worded exactly as
//! before this type existed, when the journal's errors were strings.

use std::path::PathBuf;

/// Why a journal operation failed, in words for the user.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The state folder could not be created.
    #[error("cannot create the state folder {}: {source}", dir.display())]
    CreateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    /// The database file could not be opened.
    #[error("cannot open the run journal {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// The journal's `user_version` is above the one this build writes: its
    /// tables may mean things this build does not know.
    #[error(
        "the run journal {} was written by a newer tollgate (schema {found}, this one knows {known})",
        path.display()
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    /// Another process reopened the run between reading and claiming it.
    #[error("run {0} was resumed by another process just now")]
    ResumedElsewhere(String),
    /// `TOLLGATE_TEST_NOW` is set but is not an RFC 3339 time.
    #[error("TOLLGATE_TEST_NOW={value}: not an RFC 3339 time: {source}")]
    TestNow { value: String, source: jiff::Error },
    /// `--since` is neither a duration nor a date or time.
    #[error("--since {0}: use a duration back from now (7d, 12h) or a date (2026-11-01)")]
    Since(String),
    /// `TOLLGATE_STATE_URL` is not a PostgreSQL URL (shown without its
    /// password).
    #[error("{0}")]
    StateUrl(String),
    /// The PostgreSQL journal could not be reached (the URL shown without
    /// its password, the message scrubbed of it).
    #[error("cannot open the run journal {url}: {message}")]
    PgOpen { url: String, message: String },
    /// Any PostgreSQL failure on an open journal (scrubbed of the password).
    #[error("run journal: {0}")]
    Pg(String),

    /// The team database did not answer in time: it may be hung, or the
    /// network to it down. Paid calls are refused meanwhile (fail closed).
    #[error(
        "the team ledger {url} did not answer within {secs}s (statement_timeout; the database may be hung or unreachable)"
    )]
    LedgerTimeout { url: String, secs: f64 },
    /// The local spill file (call records the team ledger could not take)
    /// could not be written, read or sent: which file, and why.
    #[error("the spill file {}: {message}", path.display())]
    Spill { path: PathBuf, message: String },
    /// Any SQLite failure while reading or writing an open journal.
    #[error("run journal: {0}")]
    Db(#[from] rusqlite::Error),
    /// Why the writer's transaction failed, for every write of its group
    /// (a full disk fails them all): one error, shared.
    #[error("{0}")]
    Group(std::sync::Arc<JournalError>),
    /// The writer thread could not be started.
    #[error("run journal: cannot start its writer: {0}")]
    WriterStart(std::io::Error),
    /// The writer thread is gone (the journal is closing): the write was
    /// not made.
    #[error("run journal: its writer has stopped; the write was not made")]
    WriterStopped,
}

/// Callers that report problems as text (a diagnostic's message, an
/// executor event) take a journal error as its message.
impl From<JournalError> for String {
    fn from(e: JournalError) -> String {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages users see are the ones the journal's string errors had.
    #[test]
    fn messages_read_as_before() {
        let newer = JournalError::NewerSchema {
            path: PathBuf::from(".tollgate/state.db"),
            found: 7,
            known: 1,
        };
        assert_eq!(
            newer.to_string(),
            "the run journal .tollgate/state.db was written by a newer tollgate (schema 7, this one knows 1)"
        );
        assert_eq!(
            String::from(JournalError::ResumedElsewhere("r-1".into())),
            "run r-1 was resumed by another process just now"
        );
        assert_eq!(
            JournalError::Since("last week".into()).to_string(),
            "--since last week: use a duration back from now (7d, 12h) or a date (2026-11-01)"
        );
        assert_eq!(
            JournalError::Db(rusqlite::Error::QueryReturnedNoRows).to_string(),
            "run journal: Query returned no rows"
        );
    }
}
