//! Data-driven snapshots: every file under `tests/inputs/check/` is checked,
//! every case under `tests/inputs/plan/` is planned, every scenario under
//! `tests/inputs/run/` is run against the fake, and every example workflow
//! is planned with every example policy. Diagnostics, plans and runs alike
//! are snapshots, reviewed like code (`cargo insta review`).

use std::path::Path;
use std::time::Duration;

use fake_llm::{FakeServer, Recorded, Reply};

use crate::support::{
    KEY_VARS, Project, cmd_snapshot_text, root, stable_table_output, team_policy, tollgate,
    transcript,
};

fn rel(path: &Path) -> String {
    path.strip_prefix(root())
        .expect("inputs live in the repository")
        .display()
        .to_string()
}

/// Runs the check of one file of a glob. A snapshot that differs is
/// reported by insta under its file; anything else that fails (a bad
/// scenario file, a command that never ends, an `expect`) panics — and
/// would stop the glob saying only what went wrong, not where: here it is
/// raised again naming the file, so one failure among dozens says which.
fn for_file(path: &Path, check: impl FnOnce()) {
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(check)) {
        let why = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("(a panic without a message)");
        panic!("{}: {why}", rel(path));
    }
}

#[test]
fn a_failure_in_a_glob_names_its_file() {
    let path = root().join("tests/inputs/run/some-scenario/workflow.yaml");
    let caught = std::panic::catch_unwind(|| {
        for_file(&path, || {
            panic!("unknown answer `nonsense` in: * => nonsense")
        });
    })
    .expect_err("the failure is raised again");
    let message = caught
        .downcast_ref::<String>()
        .expect("a formatted message");
    assert_eq!(
        message,
        "tests/inputs/run/some-scenario/workflow.yaml: unknown answer `nonsense` in: * => nonsense"
    );
    // A file that passes raises nothing.
    for_file(&path, || {});
}

#[test]
fn check_inputs() {
    insta::glob!("../inputs/check", "*.yaml", |path| {
        for_file(path, || {
            let out = tollgate(&["check", &rel(path)]);
            insta::assert_snapshot!(transcript(&out));
        });
    });
}

/// A plan case is a folder with `workflow.yaml`, `policy.yaml` and optionally
/// `args` (extra command-line arguments, one per line).
#[test]
fn plan_cases() {
    insta::glob!("../inputs/plan", "*/workflow.yaml", |path| {
        for_file(path, || {
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
    });
}

/// The non-empty, non-comment lines of a scenario file (empty if absent).
fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// One line of a scenario's `fake` file: the requests it answers and how.
struct Rule {
    when: When,
    reply: Reply,
}

enum When {
    Any,
    Model(String),
    BodyContains(String),
}

impl When {
    fn matches(&self, r: &Recorded) -> bool {
        match self {
            When::Any => true,
            When::Model(m) => r.model() == *m,
            When::BodyContains(text) => r.raw_body.contains(text.as_str()),
        }
    }
}

/// Parses `CONDITION => ANSWER` (see `tests/inputs/run/README.md`); panics
/// with the line on anything else, so a typo fails the scenario loudly.
fn rule(line: &str) -> Rule {
    let (cond, answer) = line
        .split_once(" => ")
        .unwrap_or_else(|| panic!("`CONDITION => ANSWER` expected: {line}"));
    let when = match cond.trim().split_once(' ') {
        None if cond.trim() == "*" => When::Any,
        Some(("model", m)) => When::Model(m.trim().to_owned()),
        Some(("body", text)) => When::BodyContains(text.trim().to_owned()),
        _ => panic!("unknown condition `{cond}` in: {line}"),
    };
    let words: Vec<&str> = answer.split_whitespace().collect();
    let number = |i: usize| -> u64 {
        words
            .get(i)
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("a number expected at word {i} of: {line}"))
    };
    let rest = |from: usize| words.get(from..).unwrap_or_default().join(" ");
    let reply = match words.first().copied() {
        Some("text") => Reply::text(rest(3)).usage(number(1), number(2)),
        Some("cut") => Reply::text(rest(3)).usage(number(1), number(2)).truncated(),
        Some("slow") => Reply::text(rest(2)).delay(Duration::from_secs(number(1))),
        Some("status") => Reply::status(u16::try_from(number(1)).expect("a status code")),
        Some("server-error") if rest(1) == "no-retry" => Reply::server_error().should_retry(false),
        Some("server-error") => Reply::server_error(),
        _ => panic!("unknown answer `{answer}` in: {line}"),
    };
    Rule { when, reply }
}

/// A run scenario is a folder with `workflow.yaml` and optionally
/// `policy-extra.yaml` (appended to the fake team policy), `args` (one per
/// line), `keys` (the key variables set, default all) and `fake` (its
/// answers). The snapshot is the run's output and the models the fake was
/// asked, so a scenario shows both what a user sees and what was paid for.
#[test]
fn run_scenarios() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime for the fake");
    insta::glob!("../inputs/run", "*/workflow.yaml", |path| {
        let dir = path.parent().expect("scenario folder");
        for_file(path, || rt.block_on(run_scenario(dir)));
    });
}

async fn run_scenario(dir: &Path) {
    let fake = FakeServer::start().await;
    let rules: Vec<Rule> = lines_of(&dir.join("fake"))
        .iter()
        .map(|l| rule(l))
        .collect();
    fake.set_handler(move |r| {
        rules
            .iter()
            .find(|rule| rule.when.matches(r))
            .map(|rule| rule.reply.clone())
            .unwrap_or_else(|| Reply::text(format!("no rule answers model {}", r.model())))
    });
    let extra = std::fs::read_to_string(dir.join("policy-extra.yaml")).unwrap_or_default();
    let workflow = std::fs::read_to_string(dir.join("workflow.yaml")).expect("workflow.yaml");
    let p = Project::new(&team_policy(&fake.base_url(), &extra), &workflow);
    let args = lines_of(&dir.join("args"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let keys = match lines_of(&dir.join("keys")) {
        given if given.is_empty() && !dir.join("keys").exists() => {
            KEY_VARS.iter().map(|k| (*k).to_owned()).collect()
        }
        given => given,
    };
    let env: Vec<(&str, &str)> = keys
        .iter()
        .map(|k| (k.as_str(), crate::support::KEY))
        .collect();
    let mut out = p.run_env(&args, &env).await;
    out.stderr = sorted_progress(&String::from_utf8_lossy(&out.stderr)).into_bytes();
    // Sorted: parallel steps reach the fake in any order.
    let mut asked: Vec<String> = fake.requests().iter().map(Recorded::model).collect();
    asked.sort();
    let snapshot = format!(
        "{}\n----- the fake was asked -----\n{}\n",
        cmd_snapshot_text(&out),
        asked.join("\n")
    );
    stable_table_output(p.path()).bind(|| insta::assert_snapshot!(snapshot));
}

/// `stderr` with its progress lines (one per step event, before the
/// summary's `Run of …`) sorted: parallel steps start and finish in any order.
fn sorted_progress(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().collect();
    let summary = lines
        .iter()
        .position(|l| l.starts_with("Run of "))
        .unwrap_or(0);
    let mut progress = lines[..summary].to_vec();
    progress.sort_unstable();
    let mut text = progress
        .into_iter()
        .chain(lines[summary..].iter().copied())
        .collect::<Vec<_>>()
        .join("\n");
    if stderr.ends_with('\n') {
        text.push('\n');
    }
    text
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
    for dir in ["workflows", "policies", "policies/tests"] {
        let mut files: Vec<String> = std::fs::read_dir(root().join(dir))
            .expect("folder exists")
            .map(|e| e.expect("entry"))
            .filter(|e| e.path().is_file())
            .map(|e| format!("{dir}/{}", e.file_name().to_string_lossy()))
            .collect();
        files.sort();
        args.extend(files);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = tollgate(&args);
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
}
