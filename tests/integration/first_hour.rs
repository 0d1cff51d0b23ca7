//! The first hour of a new user: no policy file (the built-in one), a
//! policy found from a subfolder, `tollgate init` and its printed commands,
//! task names checked against a vocabulary, and `check` refusing what
//! `plan` would.

use insta_cmd::assert_cmd_snapshot;

use crate::support::*;

const WORKFLOW: &str = "version: 1\nname: w\ninputs:\n  x: {type: string}\nsteps:\n  a: {task: summarize, prompt: 'Summarize {{ inputs.x }}'}\n";

/// A policy with one local model, to tell apart from the built-in one.
const PROJECT_POLICY: &str = r#"version: 1
name: project-policy
providers:
  ollama: { kind: openai-compatible, base_url: "http://127.0.0.1:11434/v1" }
models:
  local: { provider: ollama, model: "qwen3:8b", tier: local, context_window: 32768 }
rules:
  - name: all
    use: local
"#;

/// In an empty project, `plan` uses the built-in policy: it says so on
/// stderr (once, with how to write one) and the plan names it.
#[test]
fn plan_without_a_policy_file_uses_the_built_in_policy() {
    let project = Project::empty().with("some.yaml", WORKFLOW);
    let out = project
        .tollgate(&["plan", "some.yaml", "-i", "x=hello"])
        .output();
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let err = stderr(&out);
    assert_eq!(err.matches("built-in policy").count(), 1, "{err}");
    assert!(err.contains("tollgate init"), "{err}");
    let text = stdout(&out);
    assert!(text.contains("<built-in policy>"), "{text}");
    assert!(text.contains("gemma-3-270m"), "{text}");
    stable_output(project.path()).bind(|| {
        assert_cmd_snapshot!(
            "built_in_policy_plan",
            project
                .tollgate(&["plan", "some.yaml", "-i", "x=hello"])
                .into_std()
        );
    });
}

/// `check` of a workflow alone checks it against the policy `plan` would
/// use, and says which.
#[test]
fn check_without_a_policy_file_checks_against_the_built_in_policy() {
    let project = Project::empty().with("some.yaml", WORKFLOW);
    let out = project.tollgate(&["check", "some.yaml"]).output();
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    assert!(stdout(&out).contains("<built-in policy> (policy local, the default"));
    assert!(stderr(&out).contains("built-in policy"));
}

/// The project's `policies/default.yaml` is found from a subfolder (the
/// nearest ancestor with `.git`), and named as a path from there.
#[test]
fn the_default_policy_is_found_from_a_subfolder() {
    let project = Project::empty()
        .with("policies/default.yaml", PROJECT_POLICY)
        .with("deep/er/some.yaml", WORKFLOW);
    let out = Cmd::new(
        &project.path().join("deep/er"),
        &["plan", "some.yaml", "-i", "x=hi", "--format", "json"],
    )
    .output();
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    assert!(!stderr(&out).contains("built-in"), "{}", transcript(&out));
    let plan = report(&out);
    assert_eq!(
        plan["policy"]["path"], "../../policies/default.yaml",
        "{plan}"
    );
    assert_eq!(plan["policy"]["name"], "project-policy");
    // From the root itself, as before.
    let out = project
        .tollgate(&[
            "plan",
            "deep/er/some.yaml",
            "-i",
            "x=hi",
            "--format",
            "json",
        ])
        .output();
    assert_eq!(report(&out)["policy"]["path"], "policies/default.yaml");
}

const FILES: [&str; 8] = [
    "workflows/summarize.yaml",
    "policies/default.yaml",
    "evals/summarize.yaml",
    "schemas/workflow.schema.json",
    "schemas/policy.schema.json",
    "schemas/suite.schema.json",
    "policies/tests/default.yaml",
    "schemas/policy-test.schema.json",
];

/// Every template's files pass `check` and its first printed command (the
/// plan, run from the new project) works with no key and no policy flag;
/// the printed text is snapshotted.
#[test]
fn init_writes_a_project_that_checks_for_every_template() {
    for template in ["local", "team", "ci"] {
        let project = Project::empty();
        let out = project
            .tollgate(&["init", "--template", template, "proj"])
            .output();
        assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
        insta::assert_snapshot!(format!("init_{template}"), stdout(&out));
        for f in FILES {
            assert!(project.exists(&format!("proj/{f}")), "{template}: {f}");
        }
        assert_eq!(project.read("proj/.gitignore"), ".tollgate/\n");
        let dir = project.path().join("proj");
        let out = Cmd::new(
            &dir,
            &[
                "check",
                "workflows/summarize.yaml",
                "policies/default.yaml",
                "evals/summarize.yaml",
                "policies/tests/default.yaml",
            ],
        )
        .output();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{template}: {}",
            transcript(&out)
        );
        assert!(stderr(&out).is_empty(), "{template}: {}", transcript(&out));
        // The promise the starter policy tests state holds for every template.
        let out = Cmd::new(&dir, &["test", "policies/tests", "--ci"]).output();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{template}: {}",
            transcript(&out)
        );
        let out = Cmd::new(&dir, &["plan", "workflows/summarize.yaml"]).output();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{template}: {}",
            transcript(&out)
        );
        assert!(
            stdout(&out).contains("policies/default.yaml"),
            "{template}: {}",
            transcript(&out)
        );
        // Every file points its editor at a schema that is there.
        for f in &FILES[..3] {
            let text = project.read(&format!("proj/{f}"));
            let first = text.lines().next().unwrap_or_default();
            let rel = first
                .strip_prefix("# yaml-language-server: $schema=")
                .unwrap_or_else(|| panic!("{f}: {first}"));
            let schema = dir.join(f).parent().unwrap().join(rel);
            assert!(schema.is_file(), "{f}: {}", schema.display());
        }
    }
}

/// One existing file: exit 2, every existing file named, nothing written.
#[test]
fn init_refuses_to_overwrite_and_writes_nothing() {
    let project = Project::empty()
        .with("policies/default.yaml", "mine\n")
        .with("evals/summarize.yaml", "mine too\n");
    let out = project.tollgate(&["init"]).output();
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    let err = stderr(&out);
    assert!(err.contains("policies/default.yaml"), "{err}");
    assert!(err.contains("evals/summarize.yaml"), "{err}");
    assert!(!err.contains("workflows/summarize.yaml"), "{err}");
    assert!(!project.exists("workflows/summarize.yaml"));
    assert!(!project.exists("schemas"));
    assert!(!project.exists(".gitignore"));
    assert_eq!(project.read("policies/default.yaml"), "mine\n");
}

/// An existing `.gitignore` is appended to (once), never replaced.
#[test]
fn init_appends_to_gitignore() {
    let project = Project::empty().with(".gitignore", "target");
    let out = project.tollgate(&["init"]).output();
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    assert_eq!(project.read(".gitignore"), "target\n.tollgate/\n");
    assert!(
        stdout(&out).contains("Next:\n  1. tollgate plan"),
        "{}",
        transcript(&out)
    );
    let again = Project::empty().with(".gitignore", "/.tollgate\n");
    let out = again.tollgate(&["init", "--template", "ci"]).output();
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    assert_eq!(again.read(".gitignore"), "/.tollgate\n");
    assert!(
        stdout(&out).contains("already ignores"),
        "{}",
        transcript(&out)
    );
}

/// A typo in a step's task is a located error with did-you-mean, in
/// `check`, `plan` and `run`; a task the workflow or the policy declares
/// is fine.
#[test]
fn an_unknown_task_is_an_error_with_did_you_mean() {
    let wf = WORKFLOW.replace("task: summarize", "task: sumarize");
    let project = Project::new(PROJECT_POLICY, &wf).with(
        "suite.yaml",
        "workflow: wf.yaml\npolicy: policy.yaml\ncases:\n  - name: one\n    inputs: { x: a }\n",
    );
    for args in [
        vec!["check", "wf.yaml", "policy.yaml"],
        vec!["plan", "wf.yaml", "--policy", "policy.yaml", "-i", "x=a"],
        vec!["run", "wf.yaml", "--policy", "policy.yaml", "-i", "x=a"],
        vec!["test", "suite.yaml", "--replay"],
    ] {
        let out = project.tollgate(&args).output();
        assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
        let err = stderr(&out);
        assert!(err.contains("unknown task `sumarize`"), "{err}");
        assert!(err.contains("did you mean `summarize`?"), "{err}");
        assert!(err.contains("wf.yaml:6:"), "{err}");
    }
    // Declared by the workflow.
    let wf = WORKFLOW
        .replace("task: summarize", "task: triage-special")
        .replace("inputs:", "tasks: [triage-special]\ninputs:");
    let project = Project::new(PROJECT_POLICY, &wf);
    let out = project
        .tollgate(&["check", "wf.yaml", "policy.yaml"])
        .output();
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    // Declared by the policy, or named by one of its rules.
    for extra in [
        "tasks: [triage-special]\n",
        "  - name: special\n    when: { task: triage-special }\n    use: local\n",
    ] {
        let wf = WORKFLOW.replace("task: summarize", "task: triage-special");
        let policy = if extra.starts_with("tasks") {
            format!("{PROJECT_POLICY}{extra}")
        } else {
            PROJECT_POLICY.replace(
                "rules:\n",
                &format!("tasks: [triage-special]\nrules:\n{extra}"),
            )
        };
        let project = Project::new(&policy, &wf);
        let out = project
            .tollgate(&["check", "wf.yaml", "policy.yaml"])
            .output();
        assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    }
}

/// A policy rule's task is checked too: a typo there makes the rule never
/// match.
#[test]
fn an_unknown_task_in_a_policy_rule_is_an_error() {
    let policy = PROJECT_POLICY.replace(
        "rules:\n",
        "rules:\n  - name: hard\n    when: { task: [debug, architecure] }\n    use: local\n",
    );
    let project = Project::empty().with("policy.yaml", &policy);
    let out = project.tollgate(&["check", "policy.yaml"]).output();
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    let err = stderr(&out);
    assert!(err.contains("unknown task `architecure`"), "{err}");
    assert!(err.contains("did you mean `architecture`?"), "{err}");
    assert!(err.contains("policy.yaml:9:"), "{err}");
}

/// What `plan` refuses, `check` reports: a `for_each` over a string, and a
/// step no rule routes (checked against the project's default policy when
/// no policy is given).
#[test]
fn check_reports_what_plan_would_refuse() {
    let wf = "version: 1\nname: w\ninputs:\n  langs: {type: string, example: en}\nsteps:\n  a: {task: translate, for_each: inputs.langs, prompt: 'Translate into {{ item }}'}\n";
    let project = Project::new(PROJECT_POLICY, wf);
    let plan = project
        .tollgate(&["plan", "wf.yaml", "--policy", "policy.yaml"])
        .output();
    assert_eq!(plan.status.code(), Some(2), "{}", transcript(&plan));
    let check = project
        .tollgate(&["check", "wf.yaml", "policy.yaml"])
        .output();
    assert_eq!(check.status.code(), Some(2), "{}", transcript(&check));
    assert!(
        stderr(&check).contains("`for_each` of step `a` must give a list"),
        "{}",
        transcript(&check)
    );

    let unroutable = PROJECT_POLICY.replace(
        "  - name: all\n    use: local\n",
        "  - name: only-debug\n    when: { task: debug }\n    use: local\n",
    );
    let project = Project::empty()
        .with("policies/default.yaml", &unroutable)
        .with("wf.yaml", WORKFLOW);
    let plan = project.tollgate(&["plan", "wf.yaml", "-i", "x=a"]).output();
    assert_eq!(plan.status.code(), Some(2), "{}", transcript(&plan));
    let check = project.tollgate(&["check", "wf.yaml"]).output();
    assert_eq!(check.status.code(), Some(2), "{}", transcript(&check));
    assert!(
        stderr(&check).contains("no rule of policy `project-policy` matches step `a`"),
        "{}",
        transcript(&check)
    );
}

/// A stand-in for an object input without an example has no fields: a
/// template reading one is not reported, since real input may have them.
#[test]
fn check_does_not_refuse_what_only_an_invented_value_breaks() {
    let wf = "version: 1\nname: w\ninputs:\n  cfg: {type: object}\nsteps:\n  a: {task: translate, for_each: inputs.cfg.langs, prompt: 'Translate into {{ item }}'}\n";
    let project = Project::new(PROJECT_POLICY, wf);
    let check = project
        .tollgate(&["check", "wf.yaml", "policy.yaml"])
        .output();
    assert_eq!(check.status.code(), Some(0), "{}", transcript(&check));
}

/// A suite's case that `tollgate test` could not plan fails `check` too,
/// worded the same; a good case passes.
#[test]
fn check_plans_every_case_of_a_suite() {
    let wf = "version: 1\nname: w\ninputs:\n  cfg: {type: object}\nsteps:\n  a: {task: summarize, prompt: 'Hi {{ inputs.cfg.name.first }}'}\n";
    let suite = "workflow: wf.yaml\npolicy: policy.yaml\ncases:\n  - name: good\n    inputs: { cfg: { name: { first: Ada } } }\n  - name: bad\n    inputs: { cfg: { nom: x } }\n";
    let project = Project::new(PROJECT_POLICY, wf).with("suite.yaml", suite);
    let out = project.tollgate(&["check", "suite.yaml"]).output();
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    let err = stderr(&out);
    assert!(
        err.contains("case `bad` of suite `suite` cannot be planned"),
        "{err}"
    );
    assert!(!err.contains("case `good`"), "{err}");
    let fixed = suite.replace("{ nom: x }", "{ name: { first: Grace } }");
    project.write("suite.yaml", &fixed);
    let out = project.tollgate(&["check", "suite.yaml"]).output();
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
}

/// A local server that is not running: one attempt (a refused connection is
/// not transient), and the error names the URL and what to start.
#[tokio::test]
async fn a_local_server_that_is_not_running_is_named_and_not_retried() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let policy = PROJECT_POLICY.replace("11434", &port.to_string());
    let project = Project::new(&policy, WORKFLOW);
    let out = project
        .run_env(&["-i", "x=a", "--format", "json"], &[])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let all = transcript(&out);
    assert!(
        all.contains(&format!("nothing is listening at http://127.0.0.1:{port}")),
        "{all}"
    );
    assert!(all.contains("ollama serve"), "{all}");
    let r = report(&out);
    let attempts = step(&r, "a")["calls"][0]["attempts"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(attempts, 1, "{all}");
}

/// `policies/default.yaml` numbers the questions its header asks, and
/// marks each rule with the question it answers: every question is
/// answered, in the header's order, and no rule names a question the
/// header does not ask.
#[test]
fn the_default_policy_rules_are_numbered_as_its_questions() {
    let text = std::fs::read_to_string(root().join("policies/default.yaml")).unwrap();
    let questions: Vec<u32> = text
        .lines()
        .filter_map(|l| l.strip_prefix("#   "))
        .filter_map(|l| l.split_once(". ")?.0.parse().ok())
        .collect();
    assert_eq!(questions, [1, 2, 3, 4], "{text}");
    let lines: Vec<&str> = text.lines().collect();
    let mut answered = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if !line.trim_start().starts_with("- name:") {
            continue;
        }
        let comment = lines[i - 1].trim_start();
        let Some(mark) = comment.strip_prefix("# ").and_then(|c| c.split_once(". ")) else {
            // The catch-all rule answers no question.
            assert!(comment.starts_with("# Everything else"), "{comment}");
            continue;
        };
        let number: u32 = mark
            .0
            .trim_end_matches(char::is_alphabetic)
            .parse()
            .unwrap_or_else(|_| panic!("a question number: {comment}"));
        answered.push(number);
    }
    assert!(
        answered.is_sorted(),
        "rules out of question order: {answered:?}"
    );
    answered.dedup();
    assert_eq!(answered, questions);
}
