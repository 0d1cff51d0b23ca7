//! `tollgate run` on a terminal: the final answer streams to stdout as the
//! provider sends it (through a real pseudo-terminal, `script`), the key
//! never shows, a retried answer is marked where it broke off, and the
//! summary follows on stderr. Off a terminal nothing changes (the `run` and
//! `data_driven` snapshots).

use std::time::Duration;

use fake_llm::{FakeServer, Gate, Reply};
use tokio::io::AsyncReadExt;

use crate::support::{KEY, Project, policy};

/// Two steps: `draft` (Anthropic) feeds `answer` (OpenAI, the only final
/// step, whose answer streams).
const TWO_STEPS: &str = r#"version: 1
name: two
steps:
  draft:
    task: write
    prompt: "Draft something."
    max_output_tokens: 50
  answer:
    task: summarize
    prompt: "Summarize: {{ steps.draft.output }}"
    max_output_tokens: 100
"#;

/// Reads the child's terminal until `done(text so far)` holds or it ends;
/// the test fails if neither happens within a minute (no timing is
/// asserted: the minute only stops a broken build from hanging).
async fn read_until(
    out: &mut tokio::process::ChildStdout,
    seen: &mut String,
    done: impl Fn(&str) -> bool,
) {
    let mut buf = [0u8; 4096];
    let read = async {
        while !done(seen) {
            let n = out.read(&mut buf).await.expect("the terminal reads");
            if n == 0 {
                return;
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .unwrap_or_else(|_| panic!("the terminal never showed what was expected: {seen:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_final_answer_streams_to_the_terminal_as_it_arrives_without_the_key() {
    let fake = FakeServer::start().await;
    let gate = Gate::new();
    let first = "Hello, this is the first part of the answer, long enough. ";
    let second = "Second part, which the fake sends before it waits. ";
    let pieces = [
        first,
        second,
        "Third part carries the key ",
        &KEY[..12],
        &KEY[12..],
        " split across two pieces.",
    ];
    let streamed = Reply::text("").chunks(pieces).usage(20, 30);
    let held = gate.clone();
    fake.set_handler(move |r| match r.model().as_str() {
        "claude-sonnet-4-6" => Reply::text("A draft.").usage(5, 3),
        // The role chunk, `first` and `second`; then the gate.
        _ => streamed.clone().hold_after(3, held.clone()),
    });
    let p = Project::new(&policy(&fake, ""), TWO_STEPS);
    let mut child = p
        .run(&[])
        .in_terminal(Some("stderr.txt"))
        .spawn()
        .expect("script runs");
    let mut out = child.stdout.take().expect("piped stdout");
    let mut seen = String::new();
    // The first piece is on the terminal while the rest is provably unsent.
    read_until(&mut out, &mut seen, |s| s.contains(first)).await;
    assert!(!seen.contains("Third part"), "{seen:?}");
    gate.open();
    read_until(&mut out, &mut seen, |_| false).await;
    let status = child.wait().await.expect("the run ends");
    let stderr = p.read("stderr.txt");
    assert_eq!(status.code(), Some(0), "{seen}\n{stderr}");
    let expected =
        format!("{first}{second}Third part carries the key [redacted] split across two pieces.\n");
    // The terminal holds exactly the answer, once (no second copy at the end).
    assert_eq!(seen.replace("\r\n", "\n"), expected);
    assert!(!seen.contains(&KEY[..12]) && !seen.contains(&KEY[12..]));
    assert!(!stderr.contains(KEY));
    // The summary follows on stderr, as off a terminal.
    assert!(stderr.contains("answer"), "{stderr}");
    assert!(stderr.contains("succeeded"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_broke_off_is_marked_and_the_retry_follows() {
    let fake = FakeServer::start().await;
    let wf = "version: 1\nname: one\nsteps:\n  a: { task: summarize, prompt: hi, max_output_tokens: 50 }\n";
    let broken_start = "The first try begins well and then the line drops. ";
    fake.push(
        Reply::text("")
            .chunks([
                broken_start,
                "More of the first try, never finished here.",
                "x",
            ])
            // The role chunk and two pieces, then a reset.
            .abort_after(3),
    );
    fake.set_default(Reply::text("The whole second answer.").usage(4, 5));
    let p = Project::new(&policy(&fake, ""), wf);
    let mut child = p
        .run(&[])
        .in_terminal(Some("stderr.txt"))
        .spawn()
        .expect("script runs");
    let mut out = child.stdout.take().expect("piped stdout");
    let mut seen = String::new();
    read_until(&mut out, &mut seen, |_| false).await;
    let status = child.wait().await.expect("the run ends");
    let stderr = p.read("stderr.txt");
    assert_eq!(status.code(), Some(0), "{seen}\n{stderr}");
    let seen = seen.replace("\r\n", "\n");
    assert!(seen.starts_with(broken_start), "{seen:?}");
    assert!(
        seen.ends_with("\n— broke off; again on budget —\nThe whole second answer.\n"),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_several_final_answers_the_terminal_gets_them_whole_at_the_end() {
    let fake = FakeServer::start().await;
    fake.set_handler(|r| match r.model().as_str() {
        "claude-sonnet-4-6" => Reply::text("From a.").usage(5, 3),
        _ => Reply::text("From b.").usage(5, 3),
    });
    let wf = "version: 1\nname: two\nsteps:\n  a: { task: write, prompt: hi, max_output_tokens: 50 }\n  b: { task: summarize, prompt: hi, max_output_tokens: 50 }\n";
    let p = Project::new(&policy(&fake, ""), wf);
    let mut child = p
        .run(&[])
        .in_terminal(Some("stderr.txt"))
        .spawn()
        .expect("script runs");
    let mut out = child.stdout.take().expect("piped stdout");
    let mut seen = String::new();
    read_until(&mut out, &mut seen, |_| false).await;
    assert_eq!(child.wait().await.unwrap().code(), Some(0));
    assert_eq!(
        seen.replace("\r\n", "\n"),
        "## a\n\nFrom a.\n\n## b\n\nFrom b.\n\n"
    );
}

/// A cascade's first answer may escalate: it is never streamed as the
/// final answer; the escalated one is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cascade_streams_only_the_answer_that_cannot_escalate() {
    let fake = FakeServer::start().await;
    let base = fake.base_url();
    let policy = format!(
        r#"version: 1
name: cascade
providers:
  openai:    {{ kind: openai, base_url: "{base}/v1", api_key_env: TEST_OPENAI_KEY }}
  anthropic: {{ kind: anthropic, base_url: "{base}", api_key_env: TEST_ANTHROPIC_KEY }}
models:
  budget:    {{ provider: openai, model: gpt-4.1-nano, tier: budget }}
  workhorse: {{ provider: anthropic, model: claude-sonnet-4-6, tier: workhorse }}
rules:
  - name: summaries
    use: budget
    escalate: {{ to: workhorse, when: [no_match], contains: "VERIFIED" }}
"#
    );
    fake.set_handler(|r| match r.model().as_str() {
        "gpt-4.1-nano" => Reply::text("A cheap first answer, not good enough.").usage(5, 7),
        _ => Reply::text("The escalated answer, VERIFIED.").usage(5, 5),
    });
    let wf = "version: 1\nname: one\nsteps:\n  a: { task: summarize, prompt: hi, max_output_tokens: 50 }\n";
    let p = Project::new(&policy, wf);
    let mut child = p
        .run(&[])
        .in_terminal(Some("stderr.txt"))
        .spawn()
        .expect("script runs");
    let mut out = child.stdout.take().expect("piped stdout");
    let mut seen = String::new();
    read_until(&mut out, &mut seen, |_| false).await;
    let status = child.wait().await.expect("the run ends");
    let stderr = p.read("stderr.txt");
    assert_eq!(status.code(), Some(0), "{seen}\n{stderr}");
    assert_eq!(
        seen.replace("\r\n", "\n"),
        "The escalated answer, VERIFIED.\n"
    );
    assert_eq!(fake.request_count(), 2);
}

/// With the progress view on the same terminal, nothing lands inside the
/// answer: the bar is cleared when the answer starts and the view stays
/// silent until the summary, which follows the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_progress_view_never_cuts_into_the_streamed_answer() {
    let fake = FakeServer::start().await;
    // Each longer than the bytes held back for a key cut across pieces, so
    // each reaches the terminal on its own.
    let pieces = [
        "One piece of the answer, long enough to show alone, ",
        "then another piece of it, long enough to show alone, ",
        "and the last one, which ends the answer for good.",
    ];
    let streamed = Reply::text("")
        .chunks(pieces)
        .usage(20, 30)
        // Time for the bar's ticks to redraw between pieces, were it drawn.
        .chunk_delay(Duration::from_millis(300));
    fake.set_handler(move |r| match r.model().as_str() {
        "claude-sonnet-4-6" => Reply::text("A draft.").usage(5, 3),
        _ => streamed.clone(),
    });
    let p = Project::new(&policy(&fake, ""), TWO_STEPS);
    let mut child = p.run(&[]).in_terminal(None).spawn().expect("script runs");
    let mut out = child.stdout.take().expect("piped stdout");
    let mut seen = String::new();
    read_until(&mut out, &mut seen, |_| false).await;
    assert_eq!(child.wait().await.unwrap().code(), Some(0), "{seen}");
    let answer = pieces.concat();
    let at = seen
        .find(&answer)
        .unwrap_or_else(|| panic!("the answer is cut: {seen:?}"));
    // The progress lines before it, the summary after it.
    assert!(seen[..at].contains("start  answer"), "{seen:?}");
    assert!(seen[at..].contains("Run of"), "{seen:?}");
    assert!(!seen[at..].contains("done   answer"), "{seen:?}");
}
