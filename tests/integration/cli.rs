//! The command line as a user meets it: exit codes, stable output, the
//! schema command, inputs from files and stdin, JSON diagnostics.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::{root, tollgate, tollgate_in, transcript};

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

#[test]
fn plan_uses_the_default_policy_and_names_it() {
    let out = tollgate(&["plan", "workflows/ticket-triage.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("policy       team (policies/default.yaml)"),
        "{text}"
    );
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

    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args([
            "plan",
            "workflows/review-diff.yaml",
            "--input",
            "diff=@-",
            "--format",
            "json",
        ])
        .current_dir(root())
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
    assert_eq!(v["ok"], false);
    let first = &v["diagnostics"][0];
    assert_eq!(first["code"], "undefined-variable");
    assert_eq!(first["file"], "tests/inputs/check/templates.yaml");
    assert_eq!(first["line"], 12);
    assert_eq!(first["column"], 10);
    assert_eq!(first["help"], "did you mean `inputs.ticket`?");
}

#[test]
fn check_finds_problems_in_every_file_given() {
    let out = tollgate(&[
        "check",
        "tests/inputs/check/cycle.yaml",
        "tests/inputs/check/policy-errors.yaml",
        "no/such/file.yaml",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("dependency cycle: draft → review → polish → draft"),
        "{err}"
    );
    assert!(err.contains("unknown provider `olama`"), "{err}");
    assert!(
        err.contains("cannot read no/such/file.yaml: no such file"),
        "{err}"
    );
}

#[test]
fn check_cross_checks_a_workflow_against_a_policy() {
    let out = tollgate(&[
        "check",
        "tests/inputs/plan/no-local-model/workflow.yaml",
        "tests/inputs/plan/no-local-model/policy.yaml",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no model can serve step `private_summary`")
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
    let project = tempfile::tempdir().unwrap();
    std::fs::create_dir(project.path().join(".git")).unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secret.txt"),
        project.path().join("prompt.md"),
    )
    .unwrap();
    std::fs::write(
        project.path().join("wf.yaml"),
        "version: 1\nname: w\nsteps:\n  a: {task: t, prompt_file: prompt.md}\n",
    )
    .unwrap();
    let out = tollgate_in(project.path(), &["check", "wf.yaml"]);
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("prompt file `prompt.md` is outside the project"),
        "{err}"
    );
    assert!(!err.contains("top secret"));
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

#[test]
fn models_lists_the_catalog_and_a_policys_models() {
    let out = tollgate(&["models", "claude-opus-4-7"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("claude-opus-4-7 ") && l.contains(" 5 ") && l.contains(" 25 ")),
        "{text}"
    );
    let out = tollgate(&["models", "--policy", "policies/default.yaml"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("local (free)"), "{text}");
    assert!(text.contains("catalog claude-opus-5"), "{text}");
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
