//! Routes are testable: `plan --compare` (a policy change step by step,
//! against a file or a git revision, with `--fail-on` for CI) and policy
//! test files (`tollgate test` / `check` on `policies/tests/*.yaml`).

use std::process::Command;

use crate::support::*;

/// `git` in `dir`, quietly, with a fixed identity.
fn git(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn compare_shows_each_steps_route_and_cost_under_both_policies() {
    let out = tollgate(&[
        "plan",
        "workflows/ticket-triage.yaml",
        "--policy",
        "policies/local.yaml",
        "--compare",
        "policies/default.yaml",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    insta::assert_snapshot!(stdout(&out));
}

#[test]
fn fail_on_more_cloud_refuses_a_change_that_sends_local_steps_out() {
    let out = tollgate(&[
        "plan",
        "workflows/ticket-triage.yaml",
        "--policy",
        "policies/default.yaml",
        "--compare",
        "policies/local.yaml",
        "--fail-on",
        "more-cloud",
        "--fail-on",
        "more-cost",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let text = stdout(&out);
    assert!(
        text.contains("refused: more-cost: the expected total rises from $0 to"),
        "{text}"
    );
    assert!(
        text.contains("refused: more-cloud: step `summarize` would leave the machine"),
        "{text}"
    );
    // The JSON says the same, for a bot that comments on the pull request.
    let out = tollgate(&[
        "plan",
        "workflows/ticket-triage.yaml",
        "-p",
        "policies/default.yaml",
        "--compare",
        "policies/local.yaml",
        "--fail-on",
        "more-cloud",
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let kinds: Vec<&str> = v["violations"]
        .as_array()
        .expect("violations")
        .iter()
        .map(|x| x["kind"].as_str().unwrap_or_default())
        .collect();
    assert!(kinds.contains(&"leaves_machine"), "{v}");
    assert!(
        !kinds.contains(&"more_cost"),
        "more-cost was not asked for: {v}"
    );
    assert_eq!(v["totals"]["baseline_cloud_calls"], 0);
    // The same policy on both sides changes nothing and refuses nothing.
    let out = tollgate(&[
        "plan",
        "workflows/ticket-triage.yaml",
        "-p",
        "policies/default.yaml",
        "--compare",
        "policies/default.yaml",
        "--fail-on",
        "more-cloud",
        "--fail-on",
        "more-cost",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    assert!(
        stdout(&out).contains("routes changed   0 of"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn compare_reads_the_baseline_at_a_git_revision() {
    let root = root();
    let policy = std::fs::read_to_string(root.join("policies/default.yaml")).expect("policy");
    let workflow = "version: 1\nname: w\nsteps:\n  sum:\n    task: summarize\n    prompt: Summarize the release notes of version 4.2.\n  fix:\n    task: debug\n    prompt: \"Why does it crash? {{ steps.sum.output }}\"\n";
    let p = Project::empty()
        .with("policy.yaml", &policy)
        .with("wf.yaml", workflow);
    std::fs::remove_dir(p.path().join(".git")).expect("empty .git");
    git(p.path(), &["init", "-q", "-b", "main"]);
    git(p.path(), &["add", "."]);
    git(p.path(), &["commit", "-q", "-m", "policy"]);
    // The proposal: volume work goes to the flagship.
    p.write(
        "policy.yaml",
        &policy.replace(
            "use: budget\n  # Everything else",
            "use: flagship\n  # Everything else",
        ),
    );
    let out = p
        .tollgate(&[
            "plan",
            "wf.yaml",
            "-p",
            "policy.yaml",
            "--compare",
            "main:policy.yaml",
            "--fail-on",
            "more-cost",
        ])
        .output();
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let text = stdout(&out);
    assert!(text.contains("baseline  team (main:policy.yaml)"), "{text}");
    assert!(text.contains("refused: more-cost"), "{text}");
    // A revision that does not exist: one clear error, exit 2.
    let out = p
        .tollgate(&[
            "plan",
            "wf.yaml",
            "-p",
            "policy.yaml",
            "--compare",
            "nosuchbranch:policy.yaml",
        ])
        .output();
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    let err = stderr(&out);
    assert!(
        err.contains("git could not read `nosuchbranch:policy.yaml`"),
        "{err}"
    );
    assert!(err.contains("REV:PATH"), "{err}");
    // A broken policy at the revision is located in it by its spec.
    p.write(
        "broken.yaml",
        "version: 1\nname: x\nmodels: {}\nrules:\n  - name: a\n    use: nowhere\n",
    );
    git(p.path(), &["add", "."]);
    git(p.path(), &["commit", "-q", "-m", "broken"]);
    let out = p
        .tollgate(&[
            "plan",
            "wf.yaml",
            "-p",
            "policy.yaml",
            "--compare",
            "HEAD:broken.yaml",
        ])
        .output();
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    assert!(
        stderr(&out).contains("HEAD:broken.yaml:"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_compare_spec_is_never_an_option_to_git() {
    let out = tollgate(&[
        "plan",
        "workflows/ticket-triage.yaml",
        "-p",
        "policies/default.yaml",
        "--compare=--output=/tmp/pwned:x",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    assert!(!std::path::Path::new("/tmp/pwned").exists());
}

#[test]
fn tollgate_test_runs_policy_test_files_and_check_validates_them() {
    let out = tollgate(&["test", "policies/tests", "--ci"]);
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let text = stdout(&out);
    assert!(
        text.contains("policy tests policies/tests/default.yaml (policies/default.yaml, 8 tests)"),
        "{text}"
    );
    assert!(
        text.contains("ok     confidential data never leaves the machine"),
        "{text}"
    );
    let out = tollgate(&["check", "policies/tests/default.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    assert!(
        stdout(&out).contains("(policy tests of team, 8 tests)"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_broken_route_promise_fails_the_test_run_and_lands_in_junit_and_json() {
    let root = root();
    let policy = std::fs::read_to_string(root.join("policies/default.yaml")).expect("policy");
    // The change under review: architecture no longer counts as a hard problem.
    let p = Project::empty()
        .with("policies/default.yaml", &policy.replace("task: [debug, architecture, refactor, review]", "task: [debug, refactor, review]"))
        .with(
            "policies/tests/promises.yaml",
            "policy: ../default.yaml\ntests:\n  - name: architecture goes to the flagship\n    step: { task: architecture, reasoning: deep }\n    expect: { tier: flagship }\n  - name: confidential stays local\n    step: { task: debug, sensitivity: confidential }\n    expect: { locality: local }\n",
        );
    let out = p
        .tollgate(&[
            "test",
            "policies/tests",
            "--ci",
            "--junit",
            "j.xml",
            "--results",
            "r.json",
        ])
        .output();
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let text = stdout(&out);
    assert!(
        text.contains("expected tier `flagship`, got workhorse (model `workhorse`)  (policies/tests/promises.yaml:3:5)"),
        "{text}"
    );
    assert!(text.contains("ok     confidential stays local"), "{text}");
    let junit = p.read("j.xml");
    assert!(
        junit.contains("architecture goes to the flagship"),
        "{junit}"
    );
    assert!(junit.contains("<failure"), "{junit}");
    let results: serde_json::Value = serde_json::from_str(&p.read("r.json")).expect("json");
    assert_eq!(results["policy_tests"][0]["tests"][0]["passed"], false);
    assert_eq!(
        results["policy_tests"][0]["tests"][0]["got"]["model"],
        "workhorse"
    );
    // A typo in a test is a located error before anything runs.
    p.write(
        "policies/tests/promises.yaml",
        "policy: ../default.yaml\ntests:\n  - name: typo\n    step: { task: debug }\n    expect: { model: flagshp }\n",
    );
    let out = p.tollgate(&["test", "policies/tests"]).output();
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    let err = stderr(&out);
    assert!(err.contains("the policy has no model `flagshp`"), "{err}");
    assert!(err.contains("did you mean `flagship`?"), "{err}");
    assert!(err.contains("promises.yaml:5:22"), "{err}");
}

#[test]
fn policy_tests_are_sharded_and_merged_like_cases() {
    let p = Project::empty();
    let mut parts = Vec::new();
    for i in 1..=3 {
        let out = tollgate(&[
            "test",
            "policies/tests",
            "--shard",
            &format!("{i}/3"),
            "--results",
            &p.path().join(format!("r{i}.json")).display().to_string(),
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
        parts.push(p.path().join(format!("r{i}.json")).display().to_string());
    }
    let mut args = vec!["merge"];
    args.extend(parts.iter().map(String::as_str));
    args.extend(["--format", "json"]);
    let out = tollgate(&args);
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let tests = v["policy_tests"][0]["tests"].as_array().expect("tests");
    assert_eq!(tests.len(), 8, "every test once, in some shard: {v}");
}

/// The team policy's routes for the ticket-triage workflow, as a suite of
/// `plan_only` cases: no key, no recording, no call.
const ROUTE_SUITE: &str = r#"workflow: ../workflows/ticket-triage.yaml
policy: ../policies/default.yaml
cases:
  - name: logs-stay-local
    plan_only: true
    inputs: { ticket: "It crashes on save.", logs: "user=alice@example.com token=…" }
    expect:
      summarize: { route: { tier: budget, locality: cloud } }
      fix_plan: { route: { model: local, locality: local } }
  - name: classification-is-volume-work
    plan_only: true
    inputs: { ticket: "How do I export CSV?" }
    expect:
      classify: { route: { model: [budget, local], tier: budget } }
"#;

#[test]
fn plan_only_cases_check_routes_without_calling_anything() {
    let p = Project::empty().with("evals/routes.yaml", ROUTE_SUITE);
    std::fs::create_dir_all(p.path().join("workflows")).expect("dir");
    for f in [
        "workflows/ticket-triage.yaml",
        "policies/default.yaml",
        "prompts/fix-plan.md.j2",
    ] {
        let text = std::fs::read_to_string(root().join(f)).expect("repo file");
        p.write(f, &text);
    }
    // Live mode, no keys and no recordings: a plan_only case needs neither.
    let out = p.tollgate(&["test", "evals/routes.yaml"]).output();
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let text = stdout(&out);
    assert!(
        text.contains("2 passed, 0 failed, 0 errored of 2 cases; 0 calls"),
        "{text}"
    );
    // A route that moved fails the case with what was expected and what came.
    p.write(
        "evals/routes.yaml",
        &ROUTE_SUITE.replace(
            "summarize: { route: { tier: budget, locality: cloud } }",
            "summarize: { route: { tier: workhorse } }",
        ),
    );
    let out = p
        .tollgate(&["test", "evals/routes.yaml", "--replay"])
        .output();
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let text = stdout(&out);
    assert!(
        text.contains(
            "step summarize: route — expected tier `workhorse`, got budget (model `budget`)"
        ),
        "{text}"
    );
    // Answer checks in a plan_only case are refused where they are written,
    // and a typo in a model is located with did-you-mean.
    p.write(
        "evals/routes.yaml",
        &ROUTE_SUITE.replace(
            "fix_plan: { route: { model: local, locality: local } }",
            "fix_plan: { contains: [fix], route: { model: locl } }",
        ),
    );
    let out = p.tollgate(&["test", "evals/routes.yaml"]).output();
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    let err = stderr(&out);
    assert!(
        err.contains(
            "a `plan_only` case calls no model, so it cannot check the answer of step `fix_plan`"
        ),
        "{err}"
    );
    assert!(
        err.contains("the policy `team` has no model `locl`"),
        "{err}"
    );
    assert!(err.contains("did you mean `local`?"), "{err}");
    assert!(err.contains("evals/routes.yaml:9:19"), "{err}");
}
