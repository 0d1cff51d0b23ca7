//! Why a case's check could not be made: the eval runner's error type.
//!
//! Not a failed check (that is a [`super::Failure`]): the case's `error`,
//! which the results show after `judge of step …:` or `snapshot of step …:`.
//! Every message is worded exactly as before this type existed, when these
//! errors were strings; text is made only in the case's result.

use std::path::PathBuf;

use crate::diagnostic::Diagnostic;
use crate::journal::JournalError;

/// Why the journal run, the judge or a snapshot check did not happen.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CheckError {
    /// The journal did not record the run.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The journal's worker task died (a panic in SQLite code).
    #[error("run journal: {0}")]
    JournalTask(#[from] tokio::task::JoinError),
    /// The generated judge workflow did not load: its first diagnostic.
    #[error("{}", first(.0))]
    JudgeWorkflow(Vec<Diagnostic>),
    /// No model of the policy may grade at this level.
    #[error(
        "the policy cannot route the judge (task `judge`, sensitivity {level}): {}",
        first(diagnostics)
    )]
    JudgeUnroutable {
        level: String,
        diagnostics: Vec<Diagnostic>,
    },
    #[error("the judge did not run")]
    JudgeDidNotRun,
    /// The judge's step failed: its report's detail, if it has one.
    #[error("{}", .0.as_deref().unwrap_or("the judge failed"))]
    JudgeFailed(Option<String>),
    /// (`ReadError` is a reason in words, not an `Error` to chain.)
    #[error("cannot read {}: {reason}", path.display())]
    ReadSnapshot {
        path: PathBuf,
        reason: crate::files::ReadError,
    },
    #[error("cannot write {}: {source}", path.display())]
    WriteSnapshot {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The first diagnostic's message (empty if there is none, as before).
fn first(d: &[Diagnostic]) -> &str {
    d.first().map_or("", |d| d.message.as_str())
}
