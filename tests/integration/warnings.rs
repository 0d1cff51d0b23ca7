//! Warnings reach the user as diagnostics, drawn like errors (severity
//! `warning`, with the file and position), once per command, on stderr,
//! without changing the exit code; and flag problems are all reported
//! before any file is read.

use crate::support::{Project, tollgate_in, transcript};

/// A cloud provider on plain http to a non-loopback host: the one case
/// where a policy compiles with a warning.
const INSECURE_POLICY: &str = "version: 1
providers:
  remote: {kind: openai, base_url: \"http://api.example.invalid/v1\", api_key_env: TEST_OPENAI_KEY}
models:
  m: {provider: remote, model: gpt-4o-mini, tier: budget}
rules:
  - {name: all, use: m}
";

const WORKFLOW: &str = "version: 1
name: w
steps:
  a: {task: summarize, prompt: \"hello\"}
";

const SUITE: &str = "workflow: wf.yaml
policy: policy.yaml
cases:
  - name: one
";

const WARNING: &str = "is reached over plain http://";

fn project() -> Project {
    let dir = Project::new(INSECURE_POLICY, WORKFLOW);
    std::fs::write(dir.path().join("suite.yaml"), SUITE).unwrap();
    dir
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn check_plan_and_test_show_a_policy_warning_once_with_its_location() {
    let dir = project();
    let runs: [(&[&str], i32); 5] = [
        (&["check", "policy.yaml"], 0),
        (&["check", "wf.yaml", "policy.yaml", "suite.yaml"], 0),
        (&["plan", "wf.yaml", "--policy", "policy.yaml"], 0),
        (
            &[
                "plan",
                "wf.yaml",
                "--policy",
                "policy.yaml",
                "--format",
                "json",
            ],
            0,
        ),
        // No recordings: an error, after the warning was shown once.
        (&["test", "suite.yaml", "--replay"], 2),
    ];
    for (args, code) in runs {
        let out = tollgate_in(dir.path(), args);
        let text = transcript(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?}\n{text}");
        let err = stderr(&out);
        assert_eq!(err.matches(WARNING).count(), 1, "{args:?}\n{text}");
        // Drawn like an error: the file and the line it is on, quoted.
        assert!(err.contains("policy.yaml:3:"), "{args:?}\n{text}");
        assert!(err.contains("base_url"), "{args:?}\n{text}");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains(WARNING),
            "{args:?}\n{text}"
        );
    }
    // The JSON plan is still JSON: the warning went to stderr.
    let out = tollgate_in(
        dir.path(),
        &[
            "plan",
            "wf.yaml",
            "--policy",
            "policy.yaml",
            "--format",
            "json",
        ],
    );
    let _: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON plan");
    // `check --format json` lists it with its severity.
    let out = tollgate_in(dir.path(), &["check", "policy.yaml", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON diagnostics");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["diagnostics"][0]["severity"], "warning", "{v}");
}

#[test]
fn run_refuses_what_plan_warns_about_and_says_it_once() {
    let dir = project();
    let out = tollgate_in(dir.path(), &["run", "wf.yaml", "--policy", "policy.yaml"]);
    let text = transcript(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert_eq!(stderr(&out).matches(WARNING).count(), 1, "{text}");
    assert!(text.contains("allow_insecure"), "{text}");
    // A live test refuses it too, as an error only.
    let out = tollgate_in(dir.path(), &["test", "suite.yaml"]);
    let text = transcript(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert_eq!(stderr(&out).matches(WARNING).count(), 1, "{text}");
}

#[test]
fn run_reports_every_bad_flag_at_once_before_loading_anything() {
    let dir = tempfile::tempdir().unwrap();
    let out = tollgate_in(
        dir.path(),
        &[
            "run",
            "missing.yaml",
            "--timeout",
            "soon",
            "--batch-poll-interval",
            "never",
        ],
    );
    let text = transcript(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("--timeout soon: not a duration"), "{text}");
    assert!(
        text.contains("--batch-poll-interval never: not a duration"),
        "{text}"
    );
    // The workflow was never read.
    assert!(!text.contains("missing.yaml"), "{text}");
    assert!(text.contains("2 problems"), "{text}");
}

#[test]
fn test_reports_every_bad_flag_at_once_before_loading_anything() {
    let dir = tempfile::tempdir().unwrap();
    let out = tollgate_in(
        dir.path(),
        &["test", "missing.yaml", "--shard", "3/2", "--repeat", "0"],
    );
    let text = transcript(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("--shard 3/2"), "{text}");
    assert!(text.contains("--repeat must be at least 1"), "{text}");
    assert!(!text.contains("missing.yaml"), "{text}");
}

#[test]
fn an_input_no_step_reads_is_a_located_warning_that_does_not_fail() {
    let wf = "version: 1
name: w
inputs:
  ticket: {type: string, example: x}
  tiket: {type: string, default: \"\"}
steps:
  a: {task: summarize, prompt: \"{{ inputs.ticket }}\"}
";
    let dir = Project::new(INSECURE_POLICY, wf);
    for args in [
        vec!["check", "wf.yaml", "policy.yaml"],
        vec!["plan", "wf.yaml", "-p", "policy.yaml"],
    ] {
        let out = tollgate_in(dir.path(), &args);
        assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
        let err = stderr(&out);
        assert_eq!(
            err.matches("no step reads input `tiket`").count(),
            1,
            "{err}"
        );
        assert!(err.contains("wf.yaml:5:3"), "{err}");
        assert!(!err.contains("input `ticket`"), "{err}");
    }
    // A template that fails to analyze is an error, and no input is then
    // called unused on the strength of a template that was not read.
    let out = tollgate_in(dir.path(), &["check", "wf.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    dir.write(
        "wf.yaml",
        &wf.replace("{{ inputs.ticket }}", "{{ inputs.ticket | nosuchfilter }}"),
    );
    let out = tollgate_in(dir.path(), &["check", "wf.yaml", "policy.yaml"]);
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    assert!(
        !stderr(&out).contains("no step reads input"),
        "{}",
        stderr(&out)
    );
}

/// `check`'s warnings come before its verdict, whatever reads them: the
/// warnings go out first (stderr), then the verdict (stdout), so one log
/// holding both (`2>&1`) reads in that order.
#[test]
fn check_prints_its_verdict_after_its_warnings() {
    let dir = project();
    let log = dir.path().join("log.txt");
    let file = std::fs::File::create(&log).unwrap();
    let status = crate::support::Cmd::new(dir.path(), &["check", "wf.yaml", "policy.yaml"])
        .into_std()
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    let warning = text.find(WARNING).expect("the warning is shown");
    let verdict = text
        .find("checked 2 files: no problems")
        .expect("the verdict");
    assert!(warning < verdict, "{text}");
}

/// A policy given to `check` that fails to load is the error: the
/// workflow is not also checked against the default policy, and no note
/// about the built-in one is printed.
#[test]
fn check_with_a_broken_policy_does_not_fall_back_to_the_default() {
    let dir = Project::new(
        "version: 1\nmodels: {m: {provider: nowhere, model: x, tier: budget}}\nrules:\n  - {name: all, use: m}\n",
        WORKFLOW,
    );
    let out = tollgate_in(dir.path(), &["check", "wf.yaml", "policy.yaml"]);
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    let err = stderr(&out);
    assert!(err.contains("policy.yaml:"), "{err}");
    assert!(!err.contains("built-in"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("the default"));
    // Given no policy at all, the default still applies (and says so).
    let out = tollgate_in(dir.path(), &["check", "wf.yaml"]);
    assert!(
        stderr(&out).contains("built-in policy"),
        "{}",
        transcript(&out)
    );
}
