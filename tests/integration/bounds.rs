//! Bounded time and memory on hostile files: YAML that expands or nests
//! without end, paths that are FIFOs, devices or folders, files past the
//! size bound, and the project folder prompt files must stay in.
//!
//! Each test is an attack that aborted, overflowed the stack, hung or read
//! outside the project before the bounds (issue 10, section 4).

use std::path::Path;

use insta_cmd::assert_cmd_snapshot;

use crate::support::{Project, root, stable_output, stderr, tollgate_in, transcript};

const POLICY: &str = "version: 1\nname: p\nsensitivity: {levels: [public, confidential], cloud_max: public}\nproviders:\n  local: {kind: openai-compatible, base_url: 'http://127.0.0.1:1/v1'}\nmodels:\n  small: {provider: local, model: m, tier: local, context_window: 8000}\nrules:\n  - {name: all, use: small}\n";

const WORKFLOW: &str = "version: 1\nname: w\ninputs:\n  text: {type: string}\nsteps:\n  a: {task: write, prompt: 'Say {{ inputs.text }}'}\n";

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(status.success());
}

/// 584 bytes that expand to 9^9 strings: `check` aborted out of memory.
fn alias_bomb() -> String {
    let mut text = String::from("version: 1\nname: w\nsteps: {}\n");
    text.push_str("x0: &x0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..9 {
        let prev = format!("*x{}", i - 1);
        text.push_str(&format!("x{i}: &x{i} [{}]\n", vec![prev; 9].join(", ")));
    }
    text
}

#[test]
fn an_alias_bomb_is_a_located_error_not_an_abort() {
    let dir = tempfile::tempdir().unwrap();
    let bomb = alias_bomb();
    std::fs::write(dir.path().join("bomb.yaml"), &bomb).unwrap();
    {
        let out = tollgate_in(dir.path(), &["check", "bomb.yaml", "--format", "json"]);
        assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
        let diags: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let d = &diags["diagnostics"][0];
        assert_eq!(d["code"], "yaml-alias-limit", "{diags}");
        assert_eq!(d["file"], "bomb.yaml");
        // The line of an alias, the column of its `*`.
        let (line, col) = (d["line"].as_u64().unwrap(), d["column"].as_u64().unwrap());
        let text = bomb.lines().nth(line as usize - 1).unwrap();
        assert_eq!(&text[col as usize - 1..col as usize + 1], "*x", "{d}");
        assert!(d["help"].as_str().is_some());
    }
}

#[test]
fn an_alias_bomb_in_a_policy_or_a_suite_is_refused_too() {
    let dir = Project::new(POLICY, WORKFLOW);
    // Loaded as a policy (by `plan`) and as a suite (by `test`): the same
    // loader, so the same bound, before any schema check.
    std::fs::write(dir.path().join("bomb.yaml"), alias_bomb()).unwrap();
    let as_policy = [
        "plan",
        "wf.yaml",
        "--policy",
        "bomb.yaml",
        "--input",
        "text=x",
    ];
    let as_suite = ["test", "bomb.yaml", "--replay"];
    for (name, args) in [
        ("alias_bomb_as_policy", &as_policy[..]),
        ("alias_bomb_as_suite", &as_suite[..]),
    ] {
        // Exit 2: `this alias expands the document` at bomb.yaml:10.
        assert_cmd_snapshot!(name, dir.tollgate(args).into_std());
    }
}

#[test]
fn deep_nesting_is_a_located_error_not_a_stack_overflow() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [
        ("block.yaml", "- ".repeat(50_000) + "x\n"),
        (
            "flow.yaml",
            "a: ".to_owned() + &"{b: ".repeat(200) + "1" + &"}".repeat(200),
        ),
    ] {
        std::fs::write(dir.path().join(name), text).unwrap();
        let out = tollgate_in(dir.path(), &["check", name, "--format", "json"]);
        assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
        let diags: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(diags["diagnostics"][0]["code"], "yaml-too-deep", "{diags}");
        assert_eq!(diags["diagnostics"][0]["line"], 1);
    }
}

#[test]
fn a_prompt_file_that_is_a_fifo_is_refused_without_blocking() {
    let dir = Project::new(
        POLICY,
        "version: 1\nname: w\nsteps:\n  a: {task: t, prompt_file: prompt.md}\n",
    );
    // No writer ever opens it: reading it would block forever.
    mkfifo(&dir.path().join("prompt.md"));
    // Exit 2, located at `prompt_file` (wf.yaml:4): a FIFO, not a regular file.
    assert_cmd_snapshot!(dir.tollgate(&["check", "wf.yaml"]).into_std());
}

#[test]
fn a_prompt_file_that_is_a_directory_is_refused() {
    let dir = Project::new(
        POLICY,
        "version: 1\nname: w\nsteps:\n  a: {task: t, prompt_file: prompts}\n",
    );
    std::fs::create_dir(dir.path().join("prompts")).unwrap();
    // Exit 2 at wf.yaml:4: a directory, not a regular file.
    assert_cmd_snapshot!(dir.tollgate(&["check", "wf.yaml"]).into_std());
}

#[test]
fn input_files_that_are_not_regular_files_are_refused() {
    let dir = Project::new(POLICY, WORKFLOW);
    mkfifo(&dir.path().join("fifo"));
    std::fs::create_dir(dir.path().join("folder")).unwrap();
    // Each exits 2, naming `--input text` and what the path is.
    for (name, arg) in [
        ("input_fifo", "text=@fifo"),
        ("input_device", "text=@/dev/zero"),
        ("input_directory", "text=@folder"),
    ] {
        assert_cmd_snapshot!(
            name,
            dir.tollgate(&["plan", "wf.yaml", "--policy", "policy.yaml", "--input", arg])
                .into_std()
        );
    }
}

#[test]
fn an_input_file_past_the_size_bound_is_an_error_not_a_truncation() {
    let dir = Project::new(POLICY, WORKFLOW);
    // Sparse: costs no disk, reads as zeros (valid UTF-8) without end in sight.
    let big = std::fs::File::create(dir.path().join("big.txt")).unwrap();
    big.set_len(tollgate::files::MAX_TEXT_BYTES + 1).unwrap();
    // Exit 2: larger than the limit of 32 MiB.
    assert_cmd_snapshot!(
        dir.tollgate(&[
            "plan",
            "wf.yaml",
            "--policy",
            "policy.yaml",
            "--input",
            "text=@big.txt",
        ])
        .into_std()
    );
}

#[test]
fn a_case_file_that_is_a_fifo_is_refused_at_its_location() {
    let r = root();
    let dir = Project::empty().with(
        "suite.yaml",
        &format!(
            "workflow: {}\npolicy: {}\ncases_from: cases.jsonl\n",
            r.join("workflows/local-triage.yaml").display(),
            r.join("policies/local.yaml").display()
        ),
    );
    mkfifo(&dir.path().join("cases.jsonl"));
    // Exit 2 at suite.yaml:3:13: a FIFO, not a regular file.
    stable_output(dir.path()).bind(|| {
        assert_cmd_snapshot!(dir.tollgate(&["check", "suite.yaml"]).into_std());
    });
}

#[test]
fn without_git_the_project_is_the_workflow_folder_not_the_current_one() {
    // home/secret.md and home/project/wf.yaml, no `.git` anywhere: run from
    // `home`, the workflow must not reach `../secret.md`.
    let home = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join("secret.md"), "top secret").unwrap();
    let project = home.path().join("project");
    std::fs::create_dir(&project).unwrap();
    std::fs::write(
        project.join("wf.yaml"),
        "version: 1\nname: w\nsteps:\n  a: {task: write, prompt_file: ../secret.md}\n",
    )
    .unwrap();
    let out = tollgate_in(home.path(), &["check", "project/wf.yaml"]);
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    let err = stderr(&out);
    assert!(
        err.contains("prompt file `../secret.md` is outside the project"),
        "{err}"
    );
    assert!(!err.contains("top secret"));
    // A prompt file beside the workflow is inside.
    std::fs::write(project.join("p.md"), "hello").unwrap();
    std::fs::write(
        project.join("ok.yaml"),
        "version: 1\nname: w\nsteps:\n  a: {task: write, prompt_file: p.md}\n",
    )
    .unwrap();
    let out = tollgate_in(home.path(), &["check", "project/ok.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
}

#[test]
fn thousands_of_problems_print_a_bounded_report() {
    // 2000 steps without `task`, once one per line and once all on one line:
    // every drawing quoted the file's line, so the one-line file printed the
    // whole file 2000 times.
    let dir = tempfile::tempdir().unwrap();
    let steps: Vec<String> = (0..2000).map(|i| format!("s{i}: {{}}")).collect();
    std::fs::write(
        dir.path().join("lines.yaml"),
        format!("version: 1\nname: w\nsteps:\n  {}\n", steps.join("\n  ")),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("one-line.yaml"),
        format!("version: 1\nname: w\nsteps: {{{}}}\n", steps.join(", ")),
    )
    .unwrap();
    for f in ["lines.yaml", "one-line.yaml"] {
        let out = tollgate_in(dir.path(), &["check", f]);
        assert_eq!(out.status.code(), Some(2));
        let err = stderr(&out);
        assert!(err.contains("… and 1950 more problems not shown"), "{f}");
        assert!(err.contains("error: 2000 problems found"), "{f}");
        assert!(
            err.len() < 100_000,
            "{f}: {} bytes of diagnostics",
            err.len()
        );
        assert!(
            err.lines()
                .all(|l| l.len() < 2 * tollgate::diagnostic::MAX_QUOTED_LINE),
            "{f}: a huge line was quoted"
        );
        if f == "one-line.yaml" {
            // Still located.
            assert!(err.contains("one-line.yaml:3:"), "{f}");
        }
        // JSON lists them all.
        let out = tollgate_in(dir.path(), &["check", f, "--format", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["diagnostics"].as_array().unwrap().len(), 2000);
    }
}

#[test]
fn standard_input_past_the_size_bound_is_an_error_not_a_truncation() {
    use std::io::Write;
    let dir = Project::new(POLICY, WORKFLOW);
    let mut child = dir
        .tollgate(&["plan", "wf.yaml", "--policy", "policy.yaml"])
        .into_std()
        .args(["--input", "text=@-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'a'; 1024 * 1024];
        // The reader stops one byte past the bound and exits: a broken pipe
        // after that is expected.
        for _ in 0..=(tollgate::files::MAX_TEXT_BYTES / (1024 * 1024)) {
            if stdin.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    assert!(
        stderr(&out).contains("cannot read standard input: larger than the limit of 32 MiB"),
        "{}",
        transcript(&out)
    );
}

/// `plan` with the bounds' policy; exit code and the first diagnostic.
fn plan_json(workflow: &str) -> (Option<i32>, serde_json::Value, String) {
    let dir = Project::new(POLICY, workflow);
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
    let v = serde_json::from_slice(&out.stdout).unwrap_or_default();
    (out.status.code(), v, transcript(&out))
}

/// A `for_each` list built by repetition is one cheap operation for the
/// template engine and ten million calls for the plan: `plan` spun for
/// minutes. Refused at the expression, whatever builds the list.
#[test]
fn a_for_each_list_past_the_item_bound_is_a_located_error() {
    let (code, v, t) = plan_json(
        "version: 1\nname: w\nsteps:\n  a: {task: write, for_each: '[1] * 10000000', prompt: '{{ item }}'}\n",
    );
    assert_eq!(code, Some(2), "{t}");
    let d = &v["diagnostics"][0];
    assert!(
        d["message"]
            .as_str()
            .unwrap()
            .contains("more than 100000 items"),
        "{t}"
    );
    assert_eq!(
        (d["line"].as_u64(), d["column"].as_u64()),
        (Some(4), Some(31)),
        "{t}"
    );
}

/// Every prompt is bounded (8 MiB) but a fan-out renders one per item and
/// holds them all: 2,000 items of an 8 MiB prompt aborted `plan` out of
/// memory (16 GB). Here 5 items (40 MiB) cross the bound of a step's calls
/// (32 MiB) without needing much memory before the fix.
#[test]
fn a_fan_out_of_large_prompts_is_bounded_as_a_whole() {
    let (code, v, t) = plan_json(
        "version: 1\nname: w\nsteps:\n  a: {task: write, for_each: 'range(5)', prompt: '{{ \"x\" * 8000000 }}'}\n",
    );
    assert_eq!(code, Some(2), "{t}");
    let d = &v["diagnostics"][0];
    assert!(
        d["message"].as_str().unwrap().contains("render more than"),
        "{t}"
    );
    assert_eq!(d["line"].as_u64(), Some(4), "{t}");
}

/// The same across steps: each step under its own bound, the plan holding
/// all of them (200 such steps aborted `plan`; 6 cross the plan's bound).
#[test]
fn many_steps_of_large_prompts_are_bounded_as_a_whole() {
    let mut wf = String::from("version: 1\nname: w\nsteps:\n");
    for i in 0..6 {
        wf.push_str(&format!(
            "  s{i}: {{task: write, for_each: 'range(3)', prompt: '{{{{ \"x\" * 8000000 }}}}'}}\n"
        ));
    }
    let (code, v, t) = plan_json(&wf);
    assert_eq!(code, Some(2), "{t}");
    let d = &v["diagnostics"][0];
    assert!(
        d["message"].as_str().unwrap().contains("render more than"),
        "{t}"
    );
}
