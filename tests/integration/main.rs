//! One integration test binary (faster to link than many): each module is
//! one area of behaviour a user relies on.

mod batch;
mod bounds;
mod cli;
mod cost;
mod data_driven;
mod fuzz;
mod hostile;
mod journal;
mod leaks;
mod local_model;
mod money;
mod providers;
mod run;
mod sensitivity_gate;
mod suites;
mod warnings;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root: tests run the binary from there with relative paths,
/// so outputs (and snapshots) are the same on every machine.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the `tollgate` binary from `dir` with colors off.
pub fn tollgate_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["--color", "never"])
        .args(args)
        .current_dir(dir)
        .env_remove("TOLLGATE_POLICY")
        .env("NO_COLOR", "1")
        .output()
        .expect("the tollgate binary runs")
}

pub fn tollgate(args: &[&str]) -> Output {
    tollgate_in(&root(), args)
}

/// A temporary project (a folder with `.git`, so prompt files resolve inside
/// it) holding `policy.yaml` and `wf.yaml`.
pub fn temp_project(policy: &str, workflow: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join(".git")).unwrap();
    std::fs::write(dir.path().join("policy.yaml"), policy).unwrap();
    std::fs::write(dir.path().join("wf.yaml"), workflow).unwrap();
    dir
}

/// Exit code, stdout and stderr in one text, for snapshots.
pub fn transcript(out: &Output) -> String {
    format!(
        "exit: {}\n--- stdout\n{}--- stderr\n{}",
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
