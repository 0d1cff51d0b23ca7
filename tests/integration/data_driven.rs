//! Data-driven snapshots: every file under `tests/inputs/check/` is checked,
//! every case under `tests/inputs/plan/` is planned, and every example
//! workflow is planned with every example policy. Diagnostics and plans alike
//! are snapshots, reviewed like code (`cargo insta review`).

use std::path::Path;

use crate::{root, tollgate, transcript};

fn rel(path: &Path) -> String {
    path.strip_prefix(root())
        .expect("inputs live in the repository")
        .display()
        .to_string()
}

#[test]
fn check_inputs() {
    insta::glob!("../inputs/check", "*.yaml", |path| {
        let out = tollgate(&["check", &rel(path)]);
        insta::assert_snapshot!(transcript(&out));
    });
}

/// A plan case is a folder with `workflow.yaml`, `policy.yaml` and optionally
/// `args` (extra command-line arguments, one per line).
#[test]
fn plan_cases() {
    insta::glob!("../inputs/plan", "*/workflow.yaml", |path| {
        let dir = path.parent().expect("case folder");
        let mut args = vec![
            "plan".to_owned(),
            rel(path),
            "--policy".to_owned(),
            rel(&dir.join("policy.yaml")),
        ];
        if let Ok(extra) = std::fs::read_to_string(dir.join("args")) {
            args.extend(
                extra
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(str::to_owned),
            );
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = tollgate(&args);
        insta::assert_snapshot!(transcript(&out));
    });
}

#[test]
fn example_workflows_plan_with_every_example_policy() {
    let mut workflows: Vec<String> = std::fs::read_dir(root().join("workflows"))
        .expect("workflows/ exists")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    workflows.sort();
    assert!(workflows.len() >= 6, "the examples cover the task table");
    for policy in ["default", "local", "ci"] {
        for wf in &workflows {
            let out = tollgate(&[
                "plan",
                &format!("workflows/{wf}"),
                "--policy",
                &format!("policies/{policy}.yaml"),
            ]);
            assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
            let name = format!("plan_{}_with_{policy}", wf.trim_end_matches(".yaml"));
            insta::assert_snapshot!(name, String::from_utf8_lossy(&out.stdout));
        }
    }
}

#[test]
fn examples_check_clean_together() {
    let mut args = vec!["check".to_owned()];
    for dir in ["workflows", "policies"] {
        let mut files: Vec<String> = std::fs::read_dir(root().join(dir))
            .expect("folder exists")
            .map(|e| format!("{dir}/{}", e.expect("entry").file_name().to_string_lossy()))
            .collect();
        files.sort();
        args.extend(files);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = tollgate(&args);
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
}
