//! A file as it is at a git revision, for `plan --compare main:policies/default.yaml`:
//! the one place tollgate runs git.
//!
//! `git cat-file blob REV:PATH` prints exactly the stored bytes (no
//! textconv, no pager, no hooks). The spec is passed as one argument and may
//! not start with `-`, so it can never be read as an option; the output is
//! read with the same bound as any file tollgate reads.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::files;

/// How much of git's error output is read (the message shows 500 characters).
const MAX_MESSAGE_BYTES: u64 = 4096;

/// Why a revision could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("`{0}` is not a REV:PATH revision spec")]
    NotASpec(String),
    #[error("could not run git: {0}")]
    Spawn(std::io::Error),
    #[error("git could not read `{spec}`: {message}")]
    Failed { spec: String, message: String },
    #[error("`{spec}` is not a readable text file: {message}")]
    Read { spec: String, message: String },
}

/// Is `spec` written as `REV:PATH` (a revision and a path in it)?
pub fn is_revision_spec(spec: &str) -> bool {
    match spec.split_once(':') {
        Some((rev, path)) => !rev.is_empty() && !path.is_empty() && !spec.starts_with('-'),
        None => false,
    }
}

/// The text of `REV:PATH`, run from `cwd` (so `REV:./x` is relative to it,
/// `REV:x` to the repository's top, as git reads them).
pub fn show(spec: &str, cwd: &Path) -> Result<String, GitError> {
    if !is_revision_spec(spec) {
        return Err(GitError::NotASpec(spec.to_owned()));
    }
    let mut child = Command::new("git")
        .args(["cat-file", "blob", spec])
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(GitError::Spawn)?;
    let stdout = child.stdout.take().ok_or_else(|| GitError::Failed {
        spec: spec.to_owned(),
        message: "no output".to_owned(),
    })?;
    let text = files::read_stream_limited(stdout, files::MAX_TEXT_BYTES);
    if text.is_err() {
        // The read stopped early (too big): git may be blocked writing.
        let _ = child.kill();
    }
    // Only the start of what git says is shown: read no more than that.
    let mut stderr = Vec::new();
    if let Some(err) = child.stderr.take() {
        let _ = err.take(MAX_MESSAGE_BYTES).read_to_end(&mut stderr);
    }
    let status = child.wait().map_err(GitError::Spawn)?;
    if !status.success() {
        let message = String::from_utf8_lossy(&stderr);
        let message = message.trim();
        let message: String = message.chars().take(500).collect();
        return Err(GitError::Failed {
            spec: spec.to_owned(),
            message: if message.is_empty() {
                format!("git exited with {status}")
            } else {
                message
            },
        });
    }
    text.map_err(|e| GitError::Read {
        spec: spec.to_owned(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_specs_are_rev_colon_path_and_never_an_option() {
        assert!(is_revision_spec("main:policies/default.yaml"));
        assert!(is_revision_spec("HEAD~1:./p.yaml"));
        assert!(!is_revision_spec("policies/default.yaml"));
        assert!(!is_revision_spec(":p.yaml"));
        assert!(!is_revision_spec("main:"));
        assert!(!is_revision_spec("--output=/tmp/x:y"));
    }
}
