//! Image and PDF inputs end to end on the fake: the exact parts each
//! provider receives, routing that passes over a model that cannot take
//! them (rule, fallback, pin) with the plan's reason, the gate on a
//! confidential image, files refused by their bytes and size, and the
//! request hash following the bytes.

use serde_json::{Value, json};

use crate::support::*;

/// A PNG header of `w`×`h` (what `imagesize` reads) and a tag that makes
/// each file's bytes distinct.
fn png(w: u32, h: u32, tag: &[u8]) -> Vec<u8> {
    let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    b.extend(w.to_be_bytes());
    b.extend(h.to_be_bytes());
    b.extend([8, 2, 0, 0, 0, 0, 0, 0, 0]);
    b.extend(tag);
    b
}

const PDF: &[u8] = b"%PDF-1.4\n1 0 obj <</Type /Pages /Count 2>>\n2 0 obj <</Type /Page>>\n3 0 obj <</Type /Page>>\n%%EOF\n";

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn policy(base: &str, rules: &str) -> String {
    format!(
        r#"version: 1
name: mm
sensitivity: {{ levels: [public, internal, confidential], cloud_max: internal }}
providers:
  openai:    {{ kind: openai, base_url: "{base}/v1", api_key_env: TEST_OPENAI_KEY, allow_insecure: true }}
  anthropic: {{ kind: anthropic, base_url: "{base}", api_key_env: TEST_ANTHROPIC_KEY, allow_insecure: true }}
  gemini:    {{ kind: gemini, base_url: "{base}/v1beta", api_key_env: TEST_GEMINI_KEY, allow_insecure: true }}
  ollama:    {{ kind: ollama, base_url: "{base}" }}
models:
  gpt:    {{ provider: openai, model: gpt-4o, tier: workhorse }}
  claude: {{ provider: anthropic, model: claude-sonnet-4-6, tier: workhorse }}
  gem:    {{ provider: gemini, model: gemini-2.5-flash, tier: workhorse, supports_vision: true, supports_pdf_input: true }}
  llava:  {{ provider: ollama, model: "llava:7b", tier: local, context_window: 8192, supports_vision: true }}
  text:   {{ provider: openai, model: gpt-3.5-turbo, tier: budget }}
  blind:  {{ provider: ollama, model: "qwen3:8b", tier: local, context_window: 8192 }}
fallbacks: {{ text: [gpt], gpt: [llava] }}
{rules}"#
    )
}

const INPUTS: &str = "inputs:\n  photo: { type: image }\n  doc: { type: file }\n";

#[tokio::test]
async fn each_provider_receives_the_image_and_the_pdf_in_its_format() {
    let fake = fake_llm::FakeServer::start().await;
    fake.set_default(fake_llm::Reply::text("ok").usage(12, 3));
    let mut w = format!("version: 1\nname: mm\n{INPUTS}steps:\n");
    for m in ["gpt", "claude", "gem"] {
        w.push_str(&format!(
            "  {m}: {{ task: debug, prompt: '{m}-p', model: {m}, attachments: [photo, doc] }}\n"
        ));
    }
    w.push_str("  llava: { task: debug, prompt: 'llava-p', model: llava, attachments: [photo] }\n");
    let image = png(64, 32, b"one");
    let project = Project::new(
        &policy(&fake.base_url(), "rules:\n  - { name: all, use: gpt }\n"),
        &w,
    );
    std::fs::write(project.path().join("photo.png"), &image).unwrap();
    std::fs::write(project.path().join("doc.pdf"), PDF).unwrap();
    let out = project
        .run(&[
            "-i",
            "photo=@photo.png",
            "-i",
            "doc=@doc.pdf",
            "--format",
            "json",
        ])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let requests = fake.requests();
    let sent = |p: &str| -> Value {
        requests
            .iter()
            .find(|r| r.raw_body.contains(&format!("{p}-p")))
            .unwrap_or_else(|| panic!("no request for {p}"))
            .body
            .clone()
    };
    let (img, pdf) = (b64(&image), b64(PDF));
    assert_eq!(
        sent("gpt")["messages"],
        json!([{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{img}")}},
            {"type": "file", "file": {"filename": "doc.pdf", "file_data": format!("data:application/pdf;base64,{pdf}")}},
            {"type": "text", "text": "gpt-p"},
        ]}])
    );
    assert_eq!(
        sent("claude")["messages"],
        json!([{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": img}},
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": pdf}},
            {"type": "text", "text": "claude-p"},
        ]}])
    );
    assert_eq!(
        sent("gem")["contents"],
        json!([{"role": "user", "parts": [
            {"inlineData": {"mimeType": "image/png", "data": img}},
            {"inlineData": {"mimeType": "application/pdf", "data": pdf}},
            {"text": "gem-p"},
        ]}])
    );
    assert_eq!(
        sent("llava")["messages"],
        json!([{"role": "user", "content": "llava-p", "images": [img]}])
    );
}

fn plan(project: &Project, args: &[&str]) -> std::process::Output {
    let mut all = vec!["plan", "wf.yaml", "--policy", "policy.yaml"];
    all.extend_from_slice(args);
    project.tollgate(&all).output()
}

#[test]
fn a_text_only_model_is_passed_over_by_rule_fallback_and_pin_and_the_plan_says_why() {
    let w = format!(
        "version: 1\nname: mm\n{INPUTS}steps:\n  look: {{ task: debug, prompt: 'describe', attachments: [photo] }}\n  pinned: {{ task: debug, prompt: 'read', model: blind, attachments: [doc] }}\n"
    );
    // The rule names a text-only model; its fallback takes images. The pin
    // on a local text-only model has no fallback: no route.
    let project = Project::new(
        &policy(
            "http://127.0.0.1:9",
            "rules:\n  - { name: all, use: text }\n",
        ),
        &w,
    );
    std::fs::write(project.path().join("photo.png"), png(1024, 1024, b"")).unwrap();
    std::fs::write(project.path().join("doc.pdf"), PDF).unwrap();
    let out = plan(&project, &["-i", "photo=@photo.png", "-i", "doc=@doc.pdf"]);
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    let err = stderr(&out);
    assert!(
        err.contains("blind: cannot take the step's") && err.contains("takes images only"),
        "{err}"
    );
    // Without the pinned step: the rule's model is passed over for its
    // fallback, and the plan says why.
    let w = format!(
        "version: 1\nname: mm\n{INPUTS}steps:\n  look: {{ task: debug, prompt: 'describe', attachments: [photo] }}\n  other: {{ task: debug, prompt: 'read {{{{ inputs.doc.name }}}}' }}\n"
    );
    project.write("wf.yaml", &w);
    let out = plan(
        &project,
        &[
            "-i",
            "photo=@photo.png",
            "-i",
            "doc=@doc.pdf",
            "--format",
            "json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let look = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "look")
        .unwrap();
    assert_eq!(look["model"]["alias"], "gpt", "{look}");
    let passed = &look["route"]["passed_over"][0];
    assert_eq!(passed["model"], "text", "{look}");
    assert_eq!(passed["reason"], "modality", "{look}");
    // gpt-4o: 1024×1024 → 768×768, 4 tiles: 85 + 4 × 170.
    assert_eq!(look["tokens"]["attachments"], 765, "{look}");
    // A template reads the file's descriptor, never its bytes.
    let text = stdout(&plan_text(&project));
    assert!(text.contains("does not take images"), "{text}");
    assert!(
        text.contains("≈ 765 of them images and PDFs, by the provider's rule"),
        "{text}"
    );
}

fn plan_text(project: &Project) -> std::process::Output {
    plan(project, &["-i", "photo=@photo.png", "-i", "doc=@doc.pdf"])
}

#[tokio::test]
async fn a_confidential_image_never_reaches_a_cloud_model() {
    let fake = fake_llm::FakeServer::start().await;
    fake.set_default(fake_llm::Reply::text("ok").usage(12, 3));
    let w = "version: 1\nname: mm\ninputs:\n  photo: { type: image, sensitivity: confidential }\nsteps:\n  look: { task: debug, prompt: 'describe', model: claude, attachments: [photo] }\n";
    let project = Project::new(
        &policy(&fake.base_url(), "rules:\n  - { name: all, use: gpt }\n"),
        w,
    );
    std::fs::write(project.path().join("photo.png"), png(8, 8, b"secret")).unwrap();
    let out = plan(&project, &["-i", "photo=@photo.png"]);
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    assert!(
        stderr(&out).contains("above cloud_max"),
        "{}",
        transcript(&out)
    );
    // Routed by rule to the cloud with a local fallback: the local model
    // that takes images serves it.
    project.write(
        "policy.yaml",
        &policy(&fake.base_url(), "rules:\n  - { name: all, use: gpt }\n"),
    );
    project.write(
        "wf.yaml",
        "version: 1\nname: mm\ninputs:\n  photo: { type: image, sensitivity: confidential }\nsteps:\n  look: { task: debug, prompt: 'describe', attachments: [photo] }\n",
    );
    let out = project
        .run(&["-i", "photo=@photo.png", "--format", "json"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    assert!(
        requests[0].path.ends_with("/api/chat"),
        "{}",
        requests[0].path
    );
}

#[test]
fn a_renamed_text_file_and_a_huge_file_are_refused() {
    let w = format!(
        "version: 1\nname: mm\n{INPUTS}steps:\n  look: {{ task: debug, prompt: 'x', attachments: [photo, doc] }}\n"
    );
    let project = Project::new(
        &policy(
            "http://127.0.0.1:9",
            "rules:\n  - { name: all, use: gpt }\n",
        ),
        &w,
    );
    std::fs::write(project.path().join("fake.png"), "I am text, not a picture").unwrap();
    std::fs::write(project.path().join("doc.pdf"), PDF).unwrap();
    let out = plan(&project, &["-i", "photo=@fake.png", "-i", "doc=@doc.pdf"]);
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    assert!(
        stderr(&out).contains("not a PNG, JPEG, GIF or WebP image, nor a PDF"),
        "{}",
        transcript(&out)
    );
    // A PDF given for an image input: its kind comes from the bytes.
    let out = plan(&project, &["-i", "photo=@doc.pdf", "-i", "doc=@doc.pdf"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("it is a PDF, and the input is of type image"),
        "{}",
        transcript(&out)
    );
    let mut huge = png(10, 10, b"");
    huge.resize(20 * 1024 * 1024 + 1, 0);
    std::fs::write(project.path().join("huge.png"), huge).unwrap();
    let out = plan(&project, &["-i", "photo=@huge.png", "-i", "doc=@doc.pdf"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("huge.png"), "{}", transcript(&out));
    // Not as text either, and an unknown attachment is a located error.
    let out = plan(&project, &["-i", "photo=x.png", "-i", "doc=@doc.pdf"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("is given as a file"),
        "{}",
        transcript(&out)
    );
    project.write(
        "wf.yaml",
        &format!("version: 1\nname: mm\n{INPUTS}steps:\n  look: {{ task: debug, prompt: 'x', attachments: [phot] }}\n"),
    );
    let out = plan(&project, &["-i", "photo=@doc.pdf"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("attaches unknown input `phot`") && err.contains("photo"),
        "{err}"
    );
    assert!(err.contains("wf.yaml:"), "{err}");
}

#[tokio::test]
async fn the_request_hash_changes_with_the_bytes() {
    let fake = fake_llm::FakeServer::start().await;
    fake.set_default(fake_llm::Reply::text("ok").usage(12, 3));
    let w = "version: 1\nname: mm\ninputs:\n  photo: { type: image }\nsteps:\n  look: { task: debug, prompt: 'describe', model: gpt, attachments: [photo] }\n";
    let project = Project::new(
        &policy(&fake.base_url(), "rules:\n  - { name: all, use: gpt }\n"),
        w,
    );
    let hash = |tag: &[u8]| {
        std::fs::write(project.path().join("photo.png"), png(8, 8, tag)).unwrap();
        let req = tollgate::provider::ChatRequest {
            attachments: vec![std::sync::Arc::new(
                tollgate::attachment::Attachment::load(
                    &project.path().join("photo.png"),
                    tollgate::attachment::Kind::Image,
                )
                .unwrap(),
            )],
            ..tollgate::provider::ChatRequest::new("gpt-4o", "describe")
        };
        tollgate::journal::sha256_json(&tollgate::provider::request_identity(
            tollgate::provider::ProviderKind::Openai,
            &req,
        ))
    };
    assert_ne!(hash(b"a"), hash(b"b"));
    assert_eq!(hash(b"a"), hash(b"a"));
    // End to end: the response cache answers the same bytes, not others.
    let run = |tag: &'static [u8]| {
        std::fs::write(project.path().join("photo.png"), png(8, 8, tag)).unwrap();
        project.run(&["-i", "photo=@photo.png", "--format", "json"])
    };
    assert_eq!(run(b"a").await.status.code(), Some(0));
    assert_eq!(run(b"a").await.status.code(), Some(0));
    assert_eq!(fake.request_count(), 1);
    assert_eq!(run(b"b").await.status.code(), Some(0));
    assert_eq!(fake.request_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suite_gives_files_relative_to_the_suite() {
    let fake = fake_llm::FakeServer::start().await;
    fake.set_default(fake_llm::Reply::text("ok").usage(12, 3));
    let w = "version: 1\nname: mm\ninputs:\n  photo: { type: image }\nsteps:\n  look: { task: debug, prompt: 'describe', model: gpt, attachments: [photo] }\n";
    let suite = "workflow: ../wf.yaml\npolicy: ../policy.yaml\ncases:\n  - name: one\n    inputs: { photo: pics/one.png }\n    expect:\n      look: { equals: ok }\n";
    let project = Project::new(
        &policy(&fake.base_url(), "rules:\n  - { name: all, use: gpt }\n"),
        w,
    )
    .with("evals/mm.yaml", suite);
    let image = png(16, 16, b"suite");
    std::fs::create_dir_all(project.path().join("evals/pics")).unwrap();
    std::fs::write(project.path().join("evals/pics/one.png"), &image).unwrap();
    let out = project.tollgate(&["test", "--record"]).keys().await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    assert!(fake.last_request().raw_body.contains(&b64(&image)));
    // A missing file is the case's located error, and nothing runs.
    project.write("evals/mm.yaml", &suite.replace("one.png", "two.png"));
    let out = project.tollgate(&["test", "--record"]).keys().await;
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    assert!(
        stderr(&out).contains("pics/two.png"),
        "{}",
        transcript(&out)
    );
    assert_eq!(fake.request_count(), 1);
}

/// `--resume` of a run with an image: the journal keeps the file's path and
/// SHA-256 (never its bytes), so the resumed step sends the same image, the
/// finished step is not sent again, and a file changed since is refused.
#[tokio::test]
async fn a_resumed_run_sends_the_same_image_and_refuses_a_changed_one() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let fake = fake_llm::FakeServer::start().await;
    let failing = Arc::new(AtomicBool::new(true));
    let f = Arc::clone(&failing);
    fake.set_handler(move |r| {
        if f.load(Ordering::SeqCst) && r.raw_body.contains("b-p") {
            fake_llm::Reply::status(400)
        } else {
            fake_llm::Reply::text("seen").usage(12, 3)
        }
    });
    let w = "version: 1\nname: mm\ninputs:\n  photo: { type: image }\nsteps:\n  a: { task: debug, prompt: 'a-p', model: gpt, attachments: [photo] }\n  b: { task: debug, prompt: 'b-p {{ steps.a.output }}', model: gpt, attachments: [photo] }\n";
    let image = png(8, 8, b"resume");
    let project = Project::new(
        &policy(&fake.base_url(), "rules:\n  - { name: all, use: gpt }\n"),
        w,
    );
    std::fs::write(project.path().join("photo.png"), &image).unwrap();
    let first = project
        .run(&["-i", "photo=@photo.png", "--format", "json"])
        .await;
    assert_eq!(first.status.code(), Some(1), "{}", transcript(&first));

    failing.store(false, Ordering::SeqCst);
    let resumed = project
        .tollgate(&["run", "--resume", "last", "--format", "json"])
        .keys()
        .await;
    assert_eq!(resumed.status.code(), Some(0), "{}", transcript(&resumed));
    let requests = fake.requests();
    let a_sent = requests
        .iter()
        .filter(|r| r.raw_body.contains("a-p"))
        .count();
    assert_eq!(a_sent, 1, "the finished step was sent again");
    let b = requests
        .iter()
        .rev()
        .find(|r| r.raw_body.contains("b-p"))
        .expect("b was sent");
    assert_eq!(
        b.body["messages"][0]["content"][0],
        json!({"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{}", b64(&image))}})
    );

    // Fails again, then the file changes before the resume.
    failing.store(true, Ordering::SeqCst);
    let again = project.run(&["-i", "photo=@photo.png", "--no-cache"]).await;
    assert_eq!(again.status.code(), Some(1), "{}", transcript(&again));
    std::fs::write(project.path().join("photo.png"), png(8, 8, b"other")).unwrap();
    let refused = project.tollgate(&["run", "--resume", "last"]).keys().await;
    assert_eq!(refused.status.code(), Some(2), "{}", transcript(&refused));
    let err = stderr(&refused);
    assert!(
        err.contains("cannot resume with input `photo`") && err.contains("photo.png changed since"),
        "{err}"
    );
}
