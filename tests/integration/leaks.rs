//! The sensitivity gate against hostile templates: every workflow in
//! `tests/inputs/leaks/` tries to get a confidential input into a prompt the
//! policy would send to a cloud model. Each is run with `tollgate run`
//! against a logging cloud fake, with a canary as the confidential value:
//! no request carrying the canary may reach the cloud fake. Each construct
//! must either be refused with a located error, or run with the canary
//! reaching the local model only. The outcome per file is a snapshot, so a construct
//! that changes from one to the other is reviewed.

use fake_llm::{FakeServer, Reply};

use crate::support::{Cmd, KEY, Project, transcript};

pub(crate) const CANARY: &str = "CANARY-5e0d41-confidential-never-in-the-cloud";

/// A local model on one fake, a cheap cloud model on another; a confidential
/// step stays local, and the local model falls back to the cloud (the gate
/// must refuse that fallback).
pub(crate) fn leak_policy(local: &FakeServer, cloud: &FakeServer) -> String {
    format!(
        r#"version: 1
name: leak-test
sensitivity: {{ levels: [public, internal, confidential, secret], cloud_max: internal }}
providers:
  local: {{ kind: openai-compatible, base_url: "{}/v1" }}
  cloud: {{ kind: openai, base_url: "{}/v1", api_key_env: TEST_OPENAI_KEY }}
models:
  local: {{ provider: local, model: local-llm, tier: local, context_window: 8192 }}
  cloud: {{ provider: cloud, model: gpt-4.1-nano, tier: budget }}
rules:
  - name: sensitive-stays-local
    when: {{ sensitivity: {{ above: internal }} }}
    use: local
  - name: rest
    use: cloud
fallbacks:
  local: [cloud]
"#,
        local.base_url(),
        cloud.base_url()
    )
}

/// Runs one workflow; returns a one-line outcome and the canary-carrying
/// requests the cloud fake received.
pub(crate) async fn run_leak(workflow: &str, local_reply: Reply) -> (String, usize, String) {
    let local = FakeServer::start().await;
    local.set_default(local_reply);
    let cloud = FakeServer::start().await;
    cloud.set_default(Reply::text("cloud answer").usage(5, 1));
    let p = Project::new(&leak_policy(&local, &cloud), workflow);
    let out = p.run(&["--input", &format!("secret={CANARY}")]).await;
    let leaked = cloud
        .requests()
        .iter()
        .filter(|r| r.raw_body.contains(CANARY))
        .count();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let outcome = match out.status.code() {
        Some(2) => {
            // A located error: the first diagnostic's code line and place.
            let first = stderr
                .lines()
                .find(|l| l.trim_start().starts_with('×'))
                .unwrap_or("")
                .trim()
                .to_owned();
            let at = stderr
                .lines()
                .find_map(|l| l.split_once("╭─[").map(|(_, r)| r.trim_end_matches(']')))
                .unwrap_or("no location")
                .to_owned();
            format!("refused: {first} @ {at}")
        }
        code => format!(
            "ran (exit {}): {} local request(s), {} cloud request(s)",
            code.unwrap_or(-1),
            local.request_count(),
            cloud.request_count()
        ),
    };
    (outcome, leaked, transcript(&out))
}

#[tokio::test(flavor = "multi_thread")]
async fn no_template_construct_gets_a_confidential_input_to_the_cloud() {
    let dir = crate::support::root().join("tests/inputs/leaks");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/inputs/leaks exists")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 20, "one workflow per construct");
    let mut summary = String::new();
    for path in files {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let (outcome, leaked, transcript) =
            run_leak(&text, Reply::text("local answer").usage(5, 1)).await;
        assert_eq!(
            leaked, 0,
            "{name}: the cloud fake received the confidential canary\n{transcript}"
        );
        // Refused: with a location. Run: whatever reached the cloud did not
        // carry the canary (checked above).
        assert!(
            !outcome.ends_with("no location"),
            "{name}: an error without a location: {outcome}\n{transcript}"
        );
        summary.push_str(&format!("{name}: {outcome}\n"));
    }
    insta::assert_snapshot!(summary);
}

/// The harness itself: a public step does reach the cloud fake, so a 0
/// above is not an artefact of a broken setup.
#[tokio::test(flavor = "multi_thread")]
async fn control_a_public_step_reaches_the_cloud_fake() {
    let wf = "version: 1\nname: control\ninputs:\n  secret: { type: string, sensitivity: confidential }\n  note: { type: string, default: hello }\nsteps:\n  a: { task: summarize, prompt: \"Summarize {{ inputs.note }}\" }\n";
    let (outcome, leaked, t) = run_leak(wf, Reply::text("local").usage(5, 1)).await;
    assert_eq!(leaked, 0, "{t}");
    assert!(outcome.contains("1 cloud request"), "{outcome}\n{t}");
}

/// The gate at the provider boundary, on the request itself: a public input
/// that holds the same text as a confidential one routes the step to the
/// cloud, and the request is refused right before it is sent.
#[tokio::test(flavor = "multi_thread")]
async fn the_boundary_refuses_a_cloud_request_holding_a_confidential_value() {
    let local = FakeServer::start().await;
    let cloud = FakeServer::start().await;
    cloud.set_default(Reply::text("cloud answer").usage(5, 1));
    let wf = "version: 1\nname: copy\ninputs:\n  secret: { type: string, sensitivity: confidential }\n  note: { type: string }\nsteps:\n  a: { task: summarize, prompt: \"Summarize {{ inputs.note }}\" }\n";
    let p = Project::new(&leak_policy(&local, &cloud), wf);
    let out = p
        .run(&[
            "--input",
            &format!("secret={CANARY}"),
            "--input",
            &format!("note=copied: {CANARY}"),
            "--format",
            "json",
        ])
        .await;
    assert_eq!(cloud.request_count(), 0, "{}", transcript(&out));
    let report = crate::support::report(&out);
    let a = crate::support::step(&report, "a");
    assert_eq!(a["status"], "failed", "{}", transcript(&out));
    let detail = a["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("refused at the provider boundary"),
        "{detail}"
    );
    assert!(
        !detail.contains(CANARY),
        "the refusal quotes the value: {detail}"
    );
}

/// A local call that fails, whose fallbacks are all gated, reports the real
/// cause (the HTTP 500) and not only the gate's reason.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_local_call_reports_its_cause_when_the_fallbacks_are_gated() {
    let local = FakeServer::start().await;
    local.set_default(Reply::server_error());
    let cloud = FakeServer::start().await;
    cloud.set_default(Reply::text("cloud answer").usage(5, 1));
    let wf = "version: 1\nname: local-fails\ninputs:\n  secret: { type: string, sensitivity: confidential }\nsteps:\n  a: { task: summarize, retries: 0, prompt: \"Summarize {{ inputs.secret }}\" }\n";
    let p = Project::new(&leak_policy(&local, &cloud), wf);
    let out = p
        .run(&["--input", &format!("secret={CANARY}"), "--format", "json"])
        .await;
    assert_eq!(cloud.request_count(), 0, "{}", transcript(&out));
    let report = crate::support::report(&out);
    let detail = crate::support::step(&report, "a")["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(detail.contains("500"), "the cause is missing: {detail}");
    assert!(detail.contains("above cloud_max"), "{detail}");
}

/// `tollgate test` in a project, with the cloud fake's key set.
async fn suite_run(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["test"];
    all.extend_from_slice(args);
    Cmd::new(dir, &all).env("TEST_OPENAI_KEY", KEY).await
}

/// A snapshot holds what a step answered when it last ran. A confidential
/// step's snapshot holds confidential text; when the step is later made
/// public (or its snapshot is judged for any other public step), the
/// `snapshot: judge` rubric quotes that stored text to the judge, which the
/// policy routes by the *current* step's level — to the cloud.
#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_of_a_confidential_answer_never_reaches_a_cloud_judge() {
    let local = FakeServer::start().await;
    local.set_default(Reply::text(format!("local summary of {CANARY}")).usage(5, 1));
    let cloud = FakeServer::start().await;
    cloud.set_default(Reply::text("{\"verdict\": \"pass\", \"reason\": \"same\"}").usage(5, 1));
    let wf = |prompt: &str| {
        format!(
            "version: 1\nname: snap\ninputs:\n  secret: {{ type: string, sensitivity: confidential }}\nsteps:\n  a: {{ task: summarize, prompt: \"{prompt}\" }}\n"
        )
    };
    let dir = Project::new(
        &leak_policy(&local, &cloud),
        &wf("Summarize {{ inputs.secret }}"),
    );
    std::fs::create_dir(dir.path().join("evals")).unwrap();
    std::fs::write(
        dir.path().join("evals/s.yaml"),
        format!(
            "workflow: ../wf.yaml\npolicy: ../policy.yaml\ncases:\n  - name: one\n    inputs: {{ secret: \"{CANARY}\" }}\n    expect:\n      a: {{ snapshot: judge }}\n"
        ),
    )
    .unwrap();
    // The confidential step runs locally; its answer is reviewed and accepted.
    let first = suite_run(dir.path(), &[]).await;
    let accept = suite_run(dir.path(), &["--accept"]).await;
    let snap = std::fs::read_to_string(dir.path().join("evals/snapshots/s/one.a.snap"))
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", transcript(&first), transcript(&accept)));
    assert!(snap.contains(CANARY), "{snap}");
    assert_eq!(cloud.request_count(), 0);
    // The step no longer reads the secret: it is public and goes to the
    // cloud; its new answer differs, so the judge compares it with the
    // stored (confidential) one.
    std::fs::write(dir.path().join("wf.yaml"), wf("Summarize the weather")).unwrap();
    cloud.set_handler(|r| {
        if r.raw_body.contains("You grade an answer") {
            Reply::text("{\"verdict\": \"pass\", \"reason\": \"same\"}").usage(5, 1)
        } else {
            Reply::text("sunny").usage(5, 1)
        }
    });
    let out = suite_run(dir.path(), &[]).await;
    let leaked = cloud
        .requests()
        .iter()
        .filter(|r| r.raw_body.contains(CANARY))
        .count();
    assert_eq!(
        leaked,
        0,
        "the judge sent a confidential snapshot to the cloud\n{}",
        transcript(&out)
    );
}
