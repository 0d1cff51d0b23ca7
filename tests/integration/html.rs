//! The HTML pages (`report --html`, `test --html`) in a real browser:
//! Debian's Chromium, headless (installed by `.ci/run`). Each test makes
//! real runs against the loopback fake, writes the page, has Chromium parse
//! and lay it out (`--dump-dom`, `--screenshot` at phone and laptop sizes),
//! and checks what the page shows against the JSON the same command prints:
//! the numbers equal, hostile text (a model's answer that carries markup) shown as text and never as elements. On a machine without
//! Chromium these tests say so and pass, except under CI, where a missing
//! browser is a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

use fake_llm::{FakeServer, Reply};
use regex::Regex;
use serde_json::Value;
use tollgate::render::usd;

use crate::support::{Project, team_policy, transcript};

fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must install Chromium before the tests (no {})",
        path.display()
    );
    eprintln!("skipped: no Chromium (apt-get install chromium)");
    None
}

/// Chromium, headless, with a fresh profile and nothing that reaches out
/// (the machine has no network; the page must not need one either).
fn browser(chromium: &Path, profile: &Path) -> Command {
    let mut c = Command::new(chromium);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

/// The DOM as Chromium parsed it.
fn dom(chromium: &Path, page: &Path) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = browser(chromium, profile.path())
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dom = String::from_utf8(out.stdout).unwrap();
    assert!(dom.contains("</body>"), "a whole page: {dom}");
    dom
}

/// A screenshot of the page at `width`×`height`; returns the PNG's size.
fn screenshot(chromium: &Path, page: &Path, png: &Path, width: u32, height: u32) -> (u32, u32) {
    let profile = tempfile::tempdir().unwrap();
    let out = browser(chromium, profile.path())
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("--window-size={width},{height}"))
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(png).unwrap();
    assert_eq!(&bytes[1..4], b"PNG", "a PNG");
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    (be(16), be(20))
}

/// The text of the element with this id.
fn text_of(dom: &str, id: &str) -> String {
    let re = Regex::new(&format!(r#"id="{}"[^>]*>([^<]*)<"#, regex::escape(id))).unwrap();
    let Some(c) = re.captures(dom) else {
        panic!("no element #{id} in the page");
    };
    c[1].replace("&amp;", "&")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
}

/// No element but the page's own: nothing a value carried became markup.
fn assert_inert(dom: &str) {
    for tag in ["<script", "<img", "<iframe", "<a ", "<link", " onerror="] {
        assert!(!dom.contains(tag), "the page holds `{tag}`: {dom}");
    }
    // The page fetches nothing.
    for scheme in ["http://", "https://", "src=\"//"] {
        assert!(!dom.contains(scheme), "the page refers to `{scheme}`");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_page_shows_the_json_reports_numbers_in_a_real_browser() {
    let Some(chromium) = chromium() else {
        return;
    };
    let fake = FakeServer::start().await;
    fake.set_handler(|r| match r.model().as_str() {
        "gpt-4.1-nano" => Reply::text("Crash on save.").usage(1000, 90),
        "claude-sonnet-4-6" => Reply::text("We are on it.").usage(600, 120),
        _ => Reply::text("Check the write path.").usage(800, 150),
    });
    let wf = r#"version: 1
name: triage
inputs:
  ticket: { type: string }
steps:
  summarize: { task: summarize, prompt: "Summarize: {{ inputs.ticket }}", max_output_tokens: 100 }
  fix_plan: { task: debug, prompt: "Plan a fix for {{ steps.summarize.output }}", max_output_tokens: 200 }
"#;
    let p = Project::new(&team_policy(&fake.base_url(), ""), wf);
    // Five days of runs, one repeated (a cache hit).
    for (n, day) in ["01", "02", "02", "04", "05"].iter().enumerate() {
        let now = format!("2026-11-{day}T09:00:00Z");
        let input = format!("ticket=Ticket {}", n.min(2));
        let out = p
            .run_env(&["-i", &input], &[("TOLLGATE_TEST_NOW", &now)])
            .keys()
            .await;
        assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    }
    let out = p
        .tollgate_env(
            &["report", "--format", "json", "--html", "report.html"],
            &[("TOLLGATE_TEST_NOW", "2026-11-05T12:00:00Z")],
        )
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let page = p.path().join("report.html");
    let dom = dom(&chromium, &page);

    let t = &json["totals"];
    let money = |v: &Value| usd(v.as_f64().unwrap());
    assert_eq!(text_of(&dom, "total-cost"), money(&t["cost_usd"]));
    assert_eq!(text_of(&dom, "total-flagship"), money(&t["flagship_usd"]));
    assert_eq!(text_of(&dom, "total-calls"), t["calls"].to_string());
    assert_eq!(
        text_of(&dom, "total-cache-hits"),
        t["cache_hits"].to_string()
    );
    for (id, field) in [
        ("saved-routing", "routing_usd"),
        ("saved-cache", "cache_usd"),
        ("saved-prompt-cache", "prompt_cache_usd"),
        ("saved-batch", "batch_usd"),
        ("saved-context", "context_usd"),
    ] {
        // Absent from the JSON when zero (context management).
        let field = t["savings"].get(field).cloned().unwrap_or(Value::from(0.0));
        assert_eq!(text_of(&dom, id), money(&field), "{id}");
    }
    assert!(t["cache_hits"].as_u64().unwrap() > 0, "a cache hit to show");
    // One bar per day, each titled with that day's spend.
    let days = json["by_day"].as_array().unwrap();
    assert_eq!(days.len(), 4);
    assert_eq!(dom.matches("<rect ").count(), days.len(), "{dom}");
    for d in days {
        let title = format!("{}: {}", d["key"].as_str().unwrap(), money(&d["cost_usd"]));
        assert!(dom.contains(&title), "no bar titled {title}");
    }
    assert_inert(&dom);

    // Laid out at phone and laptop sizes.
    let phone = p.path().join("phone.png");
    assert_eq!(screenshot(&chromium, &page, &phone, 390, 844), (390, 844));
    let laptop = p.path().join("laptop.png");
    assert_eq!(
        screenshot(&chromium, &page, &laptop, 1280, 900),
        (1280, 900)
    );
    if let Some(dir) = std::env::var_os("TOLLGATE_SCREENSHOTS") {
        // `TOLLGATE_SCREENSHOTS=docs cargo test html::` refreshes the docs' pictures.
        std::fs::copy(&laptop, Path::new(&dir).join("report.png")).unwrap();
        std::fs::copy(&phone, Path::new(&dir).join("report-phone.png")).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_results_page_shows_failures_with_their_diffs_in_a_real_browser() {
    let Some(chromium) = chromium() else {
        return;
    };
    let fake = FakeServer::start().await;
    fake.set_handler(|r| {
        if r.raw_body.contains("dark mode") {
            Reply::text("feature").usage(20, 1)
        } else {
            // A wrong answer that carries markup.
            Reply::text("<script>alert('pwned')</script> not a bug").usage(20, 9)
        }
    });
    let wf = r#"version: 1
name: triage
inputs:
  ticket: { type: string }
steps:
  classify:
    task: classify
    prompt: "Label as bug or feature: {{ inputs.ticket }}"
    max_output_tokens: 20
"#;
    let suite = r#"workflow: ../wf.yaml
policy: ../policy.yaml
cases:
  - name: crash-on-save
    inputs: { ticket: "The app crashes when I save." }
    expect:
      classify: { equals: bug }
  - name: dark-mode
    inputs: { ticket: "Please add a dark mode." }
    expect:
      classify: { equals: feature }
"#;
    let p = Project::new(&team_policy(&fake.base_url(), ""), wf).with("evals/triage.yaml", suite);
    let out = p
        .tollgate(&[
            "test",
            "--html",
            "results.html",
            "--results",
            "results.json",
        ])
        .keys()
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let json: Value = serde_json::from_str(&p.read("results.json")).unwrap();
    let page = p.path().join("results.html");
    let dom = dom(&chromium, &page);

    let cases = json["suites"][0]["cases"].as_array().unwrap();
    let count = |o: &str| {
        cases
            .iter()
            .filter(|c| c["outcome"] == o)
            .count()
            .to_string()
    };
    assert_eq!(text_of(&dom, "total-cases"), cases.len().to_string());
    assert_eq!(text_of(&dom, "total-passed"), count("passed"));
    assert_eq!(text_of(&dom, "total-failed"), count("failed"));
    assert_eq!(text_of(&dom, "total-errored"), count("errored"));
    assert_eq!(text_of(&dom, "pass-rate"), "50.0%");
    let cost: f64 = cases.iter().map(|c| c["cost_usd"].as_f64().unwrap()).sum();
    assert_eq!(text_of(&dom, "total-cost"), usd(cost));
    // The failed case is listed with its expectation and the model's
    // answer, the answer's markup as text; the passed case is not listed.
    assert!(dom.contains("crash-on-save"), "{dom}");
    assert!(
        !dom.contains(">dark-mode<"),
        "passed cases are counted, not listed"
    );
    assert!(dom.contains("classify: equals"), "{dom}");
    assert!(
        dom.contains("&lt;script&gt;alert('pwned')&lt;/script&gt;"),
        "{dom}"
    );
    assert_inert(&dom);
    let phone = p.path().join("phone.png");
    assert_eq!(screenshot(&chromium, &page, &phone, 390, 844), (390, 844));
    if let Some(dir) = std::env::var_os("TOLLGATE_SCREENSHOTS") {
        std::fs::copy(&phone, Path::new(&dir).join("results-phone.png")).unwrap();
    }
}

#[test]
fn an_unwritable_html_path_is_one_clear_error_and_nothing_else_is_written() {
    let p = Project::empty().with("notes", "a file, not a folder");
    let out =
        crate::support::Cmd::new(p.path(), &["report", "--html", "notes/report.html"]).output();
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    let text = transcript(&out);
    assert!(text.contains("cannot write notes/report.html"), "{text}");
    assert!(
        !text.contains("Spend"),
        "no report printed after the error: {text}"
    );
    assert_eq!(p.read("notes"), "a file, not a folder");
}

#[test]
fn the_comparison_page_shows_the_json_comparisons_numbers_in_a_real_browser() {
    let Some(chromium) = chromium() else {
        return;
    };
    let root = crate::support::root();
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("compare.html");
    let out = crate::support::Cmd::new(
        &root,
        &[
            "compare",
            "examples/compare/compare.yaml",
            "--policy",
            "policies/local.yaml",
            "--policy",
            "policies/default.yaml",
            "--replay",
            "--format",
            "json",
            "-q",
            "--html",
            &page.display().to_string(),
        ],
    )
    .output();
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let dom = dom(&chromium, &page);
    let suite = &json["suites"][0];
    // The suite table comes first: each variant's first row is its suite row.
    for row in suite["rows"].as_array().unwrap() {
        let variant = row["variant"].as_str().unwrap();
        let re = Regex::new(&format!(
            r#"data-variant="{variant}".*?<td class="rate">([^<]*)</td>.*?<td class="cost">([^<]*)</td>"#
        ))
        .unwrap();
        let c = re.captures(&dom).expect("the variant's row");
        let rate = format!("{:.0}%", row["pass_rate"].as_f64().unwrap() * 100.0);
        assert_eq!(&c[1], rate, "{variant}");
        assert_eq!(&c[2], usd(row["cost_usd"].as_f64().unwrap()), "{variant}");
    }
    // One point per variant, the front drawn through the Pareto ones.
    let points = suite["rows"].as_array().unwrap().len();
    assert_eq!(dom.matches("<circle ").count(), points, "{dom}");
    assert!(dom.contains("<polyline "), "the Pareto front");
    assert_inert(&dom);
    let png = dir.path().join("compare.png");
    assert_eq!(screenshot(&chromium, &page, &png, 390, 844), (390, 844));
}
