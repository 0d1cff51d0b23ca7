//! Saying the truth early (issue 15): models past or near their providers'
//! retirement dates, tier labels far from a model's price.

use insta_cmd::assert_cmd_snapshot;

use crate::support::*;

const WORKFLOW: &str = "version: 1\nname: w\ninputs:\n  x: {type: string}\nsteps:\n  a: {task: summarize, prompt: 'Summarize {{ inputs.x }}'}\n";

/// gpt-4.1-nano retires on 2026-10-23 (successor gpt-5.6-luna in the
/// catalog); gpt-5.4-mini has no date.
const POLICY: &str = r#"version: 1
name: dated
providers:
  openai: { kind: openai, api_key_env: TEST_OPENAI_KEY }
models:
  nano: { provider: openai, model: gpt-4.1-nano, tier: budget }
  mini: { provider: openai, model: gpt-5.4-mini, tier: workhorse }
rules:
  - name: all
    use: nano
fallbacks:
  nano: [mini]
"#;

fn project() -> Project {
    Project::new(POLICY, WORKFLOW)
}

/// Months before the date: nothing is said (the tests' default day).
#[test]
fn a_model_far_from_its_retirement_says_nothing() {
    let project = project();
    let out = project
        .tollgate(&["plan", "wf.yaml", "--policy", "policy.yaml", "-i", "x=1"])
        .output();
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    assert!(!stderr(&out).contains("retire"), "{}", transcript(&out));
}

/// Within 90 days of the date: a located warning in `check` and `plan`,
/// naming the date and the successor; the exit code does not change.
#[test]
fn a_model_retiring_soon_is_a_warning_naming_its_successor() {
    let project = project();
    for args in [
        &["check", "wf.yaml", "policy.yaml"][..],
        &["plan", "wf.yaml", "--policy", "policy.yaml", "-i", "x=1"][..],
    ] {
        let out = project
            .tollgate(args)
            .env("TOLLGATE_TEST_TODAY", "2026-09-01")
            .output();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", transcript(&out));
        let err = stderr(&out);
        assert_eq!(
            err.matches("`gpt-4.1-nano` retires on 2026-10-23").count(),
            1,
            "{args:?}: {err}"
        );
        assert!(err.contains("policy.yaml:6:"), "{err}");
        assert!(err.contains("in 52 days"), "{err}");
        assert!(err.contains("`gpt-5.6-luna`"), "{err}");
    }
    stable_output(project.path()).bind(|| {
        assert_cmd_snapshot!(
            "retiring_model_check",
            project
                .tollgate(&["check", "wf.yaml", "policy.yaml"])
                .env("TOLLGATE_TEST_TODAY", "2026-09-01")
                .into_std()
        );
    });
}

/// From the date on: an error in `check`, `plan` and `run` (exit 2, no
/// call made), naming the successor.
#[test]
fn a_retired_model_is_an_error() {
    let project = project();
    for args in [
        &["check", "wf.yaml", "policy.yaml"][..],
        &["plan", "wf.yaml", "--policy", "policy.yaml", "-i", "x=1"][..],
        &["run", "wf.yaml", "--policy", "policy.yaml", "-i", "x=1"][..],
    ] {
        let out = project
            .tollgate(args)
            .env("TOLLGATE_TEST_TODAY", "2026-10-23")
            .output();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", transcript(&out));
        let err = stderr(&out);
        assert!(
            err.contains("`gpt-4.1-nano` was retired on 2026-10-23"),
            "{args:?}: {err}"
        );
        assert!(err.contains("retired today: calls to it fail"), "{err}");
        assert!(err.contains("set `model: gpt-5.6-luna`"), "{err}");
    }
    stable_output(project.path()).bind(|| {
        assert_cmd_snapshot!(
            "retired_model_plan",
            project
                .tollgate(&["plan", "wf.yaml", "--policy", "policy.yaml", "-i", "x=1"])
                .env("TOLLGATE_TEST_TODAY", "2026-12-07")
                .into_std()
        );
    });
}

/// A malformed test day is an error, not a silent fall back to the clock.
#[test]
fn a_bad_test_day_is_an_error() {
    let out = project()
        .tollgate(&["check", "wf.yaml", "policy.yaml"])
        .env("TOLLGATE_TEST_TODAY", "tomorrow")
        .output();
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    assert!(stderr(&out).contains("TOLLGATE_TEST_TODAY"));
}

/// A flagship-priced model labelled `budget`: a located warning in `check`
/// (and wherever the policy is loaded), exit code unchanged.
#[test]
fn a_flagship_priced_model_labelled_budget_is_a_warning() {
    let policy = POLICY.replace(
        "model: gpt-4.1-nano, tier: budget",
        "model: claude-opus-5, tier: budget",
    );
    let policy = policy.replace(
        "  openai: { kind: openai, api_key_env: TEST_OPENAI_KEY }\n",
        "  openai: { kind: openai, api_key_env: TEST_OPENAI_KEY }\n  anthropic: { kind: anthropic, api_key_env: TEST_ANTHROPIC_KEY }\n",
    );
    let policy = policy.replace(
        "provider: openai, model: claude",
        "provider: anthropic, model: claude",
    );
    let project = Project::new(&policy, WORKFLOW);
    let out = project
        .tollgate(&["check", "wf.yaml", "policy.yaml"])
        .output();
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let err = stderr(&out);
    assert!(
        err.contains("model `nano` is labelled `budget` but `claude-opus-5` is flagship-priced"),
        "{err}"
    );
    assert!(err.contains("policy.yaml:7:"), "{err}");
    assert!(err.contains("set `tier: flagship`"), "{err}");
}
