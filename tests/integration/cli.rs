//! The command line as a user meets it: exit codes, stable output, the
//! schema command, inputs from files and stdin, JSON diagnostics.

use std::io::Write;
use std::process::Stdio;

use insta_cmd::assert_cmd_snapshot;

use crate::support::{Cmd, Project, root, stable_output, tollgate, transcript};

#[test]
fn schema_command_prints_the_shipped_schemas() {
    for kind in ["workflow", "policy", "suite"] {
        let out = tollgate(&["schema", kind]);
        assert_eq!(out.status.code(), Some(0));
        let shipped =
            std::fs::read_to_string(root().join(format!("schemas/{kind}.schema.json"))).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim_end(),
            shipped.trim_end()
        );
        let _: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    }
}

#[test]
fn plan_output_is_byte_for_byte_stable() {
    for format in ["text", "json"] {
        let args = ["plan", "workflows/review-diff.yaml", "--format", format];
        let first = tollgate(&args);
        let second = tollgate(&args);
        assert_eq!(first.status.code(), Some(0), "{}", transcript(&first));
        assert_eq!(
            first.stdout, second.stdout,
            "plan --format {format} changed between runs"
        );
    }
}

/// Without `--policy`, the plan is made with (and names) `policies/default.yaml`.
#[test]
fn plan_uses_the_default_policy_and_names_it() {
    assert_cmd_snapshot!(Cmd::new(&root(), &["plan", "workflows/ticket-triage.yaml"]).into_std());
}

#[test]
fn plan_json_describes_routes_and_costs() {
    let out = tollgate(&["plan", "workflows/debug-incident.yaml", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let steps = plan["steps"].as_array().unwrap();
    let hyp = steps.iter().find(|s| s["id"] == "hypotheses").unwrap();
    // Confidential through the logs it reads, so it stays local whatever the
    // deep-reasoning rule would have liked.
    assert_eq!(hyp["sensitivity"]["level"], "confidential");
    assert_eq!(hyp["sensitivity"]["origin"]["kind"], "step");
    assert_eq!(hyp["model"]["locality"], "local");
    assert!(
        plan["totals"]["cost"]["low"].as_f64().unwrap()
            <= plan["totals"]["cost"]["high"].as_f64().unwrap()
    );
    let saving = plan["totals"]["flagship"]["saving_percent"]
        .as_f64()
        .unwrap();
    assert!(saving > 0.0 && saving < 100.0, "{saving}");
}

#[test]
fn inputs_come_from_files_and_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let diff = dir.path().join("change.diff");
    std::fs::write(&diff, "--- a/x\n+++ b/x\n@@ -1 +1 @@\n-old\n+new\n").unwrap();
    let from_file = tollgate(&[
        "plan",
        "workflows/review-diff.yaml",
        "--input",
        &format!("diff=@{}", diff.display()),
        "--format",
        "json",
    ]);
    assert_eq!(
        from_file.status.code(),
        Some(0),
        "{}",
        transcript(&from_file)
    );

    let mut child = Cmd::new(
        &root(),
        &[
            "plan",
            "workflows/review-diff.yaml",
            "--input",
            "diff=@-",
            "--format",
            "json",
        ],
    )
    .into_std()
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"--- a/x\n+++ b/x\n@@ -1 +1 @@\n-old\n+new\n")
        .unwrap();
    let from_stdin = child.wait_with_output().unwrap();
    assert_eq!(
        from_stdin.status.code(),
        Some(0),
        "{}",
        transcript(&from_stdin)
    );
    // Same diff, same plan: the input is given, not the example.
    assert_eq!(from_file.stdout, from_stdin.stdout);
    let plan: serde_json::Value = serde_json::from_slice(&from_stdin.stdout).unwrap();
    assert_eq!(plan["inputs"][0]["source"], "given");
}

#[test]
fn check_reports_json_diagnostics_with_locations() {
    let out = tollgate(&[
        "check",
        "tests/inputs/check/templates.yaml",
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Every diagnostic whole: code, file, line, column, help.
    insta::assert_json_snapshot!(v);
}

/// One report for all the files: the cycle, the policy's errors and the
/// missing file, exit 2.
#[test]
fn check_finds_problems_in_every_file_given() {
    assert_cmd_snapshot!(
        Cmd::new(
            &root(),
            &[
                "check",
                "tests/inputs/check/cycle.yaml",
                "tests/inputs/check/policy-errors.yaml",
                "no/such/file.yaml",
            ],
        )
        .into_std()
    );
}

#[test]
fn check_cross_checks_a_workflow_against_a_policy() {
    // Together: no model can serve step `private_summary`.
    assert_cmd_snapshot!(
        Cmd::new(
            &root(),
            &[
                "check",
                "tests/inputs/plan/no-local-model/workflow.yaml",
                "tests/inputs/plan/no-local-model/policy.yaml",
            ],
        )
        .into_std()
    );
    // Alone, each file is fine.
    for f in ["workflow", "policy"] {
        let out = tollgate(&[
            "check",
            &format!("tests/inputs/plan/no-local-model/{f}.yaml"),
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    }
}

#[test]
fn usage_errors_exit_2() {
    let out = tollgate(&["plan"]);
    assert_eq!(out.status.code(), Some(2));
    let out = tollgate(&[
        "plan",
        "workflows/review-diff.yaml",
        "--input",
        "no-equals-sign",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = tollgate(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn a_symlink_cannot_smuggle_a_prompt_file_out_of_the_project() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), "top secret").unwrap();
    let project = Project::empty().with(
        "wf.yaml",
        "version: 1\nname: w\nsteps:\n  a: {task: t, prompt_file: prompt.md}\n",
    );
    std::os::unix::fs::symlink(
        outside.path().join("secret.txt"),
        project.path().join("prompt.md"),
    )
    .unwrap();
    let out = project.tollgate(&["check", "wf.yaml"]).output();
    // The point: the file's text is never read into the output.
    assert!(!transcript(&out).contains("top secret"));
    // Exit 2, located: prompt file `prompt.md` is outside the project.
    stable_output(project.path()).bind(|| crate::assert_output_snapshot!("symlinked_prompt", out));
}

#[test]
fn a_key_pasted_into_a_policy_never_reaches_the_output() {
    let out = tollgate(&[
        "check",
        "tests/inputs/check/policy-schema.yaml",
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("secret-in-file"), "{all}");
    let text = tollgate(&["check", "tests/inputs/check/policy-schema.yaml"]);
    let all = format!("{all}{}", String::from_utf8_lossy(&text.stderr));
    assert!(!all.contains("sk-do-not-put-keys-here"), "{all}");
}

/// A catalog search (claude-opus-4-7 at $5/$25 per Mtok) and a policy's
/// models (local ones free, catalog names shown).
#[test]
fn models_lists_the_catalog_and_a_policys_models() {
    assert_cmd_snapshot!(
        "models_search",
        Cmd::new(&root(), &["models", "claude-opus-4-7"]).into_std()
    );
    assert_cmd_snapshot!(
        "models_of_a_policy",
        Cmd::new(&root(), &["models", "--policy", "policies/default.yaml"]).into_std()
    );
}

#[test]
fn the_committed_catalog_is_what_regenerate_builds() {
    let source = root().join("../shared/data/model_prices_and_context_window.json");
    if !source.exists() {
        // The pricing data lives beside the repository on team machines and
        // in CI; a lone clone cannot rebuild the catalog, and says so.
        eprintln!("skipped: {} not present", source.display());
        return;
    }
    let out = tollgate(&["models", "--regenerate", source.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let committed = std::fs::read_to_string(root().join("catalog/models.json")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        committed.trim_end()
    );
}
