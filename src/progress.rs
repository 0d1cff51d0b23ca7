//! The live view of a run and of a test run (CLI layer): a progress bar on a
//! terminal, plain lines otherwise (CI logs), both on stderr so stdout stays
//! for results. The executor and the suite runner only send events; this is
//! where they meet the terminal.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};

use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::diagnostic::{self, Diagnostic, RenderOptions};
use crate::eval::results::{Outcome, RunResult};
use crate::eval::runner::OnRun;
use crate::run::{AnswerSink, Event, StepStatus};

/// The progress bar of a run, on a terminal unless `quiet`.
pub fn run_bar(total_steps: u64, quiet: bool) -> Option<ProgressBar> {
    (std::io::stderr().is_terminal() && !quiet).then(|| {
        let bar = ProgressBar::new(total_steps);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        bar
    })
}

/// Consumes events until the run ends (the sender is dropped), drawing
/// `bar` (from [`run_bar`]) or plain lines. Once `answer` has started
/// streaming to the terminal the view stays silent (a line on stderr
/// would land inside the answer); journal warnings are kept for the end.
pub async fn report(
    mut rx: UnboundedReceiver<Event>,
    bar: Option<ProgressBar>,
    quiet: bool,
    options: RenderOptions,
    answer: Option<Arc<StdoutAnswer>>,
) {
    // Runs `draw` unless the answer is streaming; false when it did not.
    let show = |draw: &mut dyn FnMut()| match &answer {
        Some(a) => a.unless_streaming(draw),
        None => {
            draw();
            true
        }
    };
    let mut kept: Vec<String> = Vec::new();
    let mut running: Vec<String> = Vec::new();
    while let Some(event) = rx.recv().await {
        if let Some(d) = warning(&event) {
            let text = diagnostic::render(&d, options);
            let shown = show(&mut || match &bar {
                Some(bar) => bar.println(text.trim_end()),
                None => {
                    let _ = write!(std::io::stderr().lock(), "{text}");
                }
            });
            if !shown {
                kept.push(text);
            }
            continue;
        }
        match &event {
            Event::StepStarted { step, .. } => running.push(step.clone()),
            Event::StepFinished { step, .. } => running.retain(|s| s != step),
            _ => {}
        }
        let line = if quiet { None } else { line(&event) };
        show(&mut || match (&bar, &line) {
            (Some(bar), line) => {
                if matches!(event, Event::StepFinished { .. }) {
                    bar.inc(1);
                }
                if let Some(line) = line {
                    bar.set_message(running.join(", "));
                    bar.println(line);
                }
            }
            (None, Some(line)) => {
                let _ = writeln!(std::io::stderr().lock(), "{line}");
            }
            (None, None) => {}
        });
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    for text in kept {
        let _ = write!(std::io::stderr().lock(), "{text}");
    }
}

/// The run's final answer written to stdout (a terminal) as it streams
/// ([`crate::run::AnswerSink`]). When its first text arrives the progress
/// bar is cleared and the live view falls silent, so nothing lands inside
/// the answer; the run summary follows it as usual.
///
/// An attempt that broke off part way (a retry, a fallback, the
/// escalation) stays on the screen — it cannot be taken back — and the
/// next attempt starts below a marker line `— broke off; again on MODEL —`,
/// so what follows the last marker is the answer.
pub struct StdoutAnswer {
    bar: Option<ProgressBar>,
    state: Mutex<Streamed>,
}

#[derive(Default)]
struct Streamed {
    started: bool,
    /// The text of the attempt being streamed.
    attempt: String,
}

impl StdoutAnswer {
    pub fn new(bar: Option<ProgressBar>) -> StdoutAnswer {
        StdoutAnswer {
            bar,
            state: Mutex::new(Streamed::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Streamed> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `draw` (a progress line) unless the answer is streaming, under
    /// the same lock as the answer's text, so neither cuts into the other.
    fn unless_streaming(&self, draw: &mut dyn FnMut()) -> bool {
        let state = self.state();
        if state.started {
            return false;
        }
        draw();
        true
    }

    /// The run is over and `output` is the final step's answer (`None`: it
    /// has none). True when what is on the screen already is that answer,
    /// ended with a newline; else a half answer is marked as such and the
    /// caller prints the answer as it would have without streaming.
    pub fn finish(&self, output: Option<&str>) -> bool {
        let state = self.state();
        if !state.started {
            return false;
        }
        let mut out = std::io::stdout().lock();
        if output == Some(state.attempt.as_str()) {
            if !state.attempt.ends_with('\n') {
                let _ = writeln!(out);
            }
            let _ = out.flush();
            return true;
        }
        let _ = write!(out, "\n— broke off —\n");
        let _ = out.flush();
        false
    }
}

impl AnswerSink for StdoutAnswer {
    fn attempt(&self, model: &str) {
        let mut state = self.state();
        if !state.attempt.is_empty() {
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "\n— broke off; again on {model} —\n");
            let _ = out.flush();
        }
        state.attempt.clear();
    }

    fn text(&self, piece: &str) {
        let mut state = self.state();
        if !state.started {
            state.started = true;
            if let Some(bar) = &self.bar {
                bar.finish_and_clear();
            }
        }
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(piece.as_bytes());
        let _ = out.flush();
        state.attempt.push_str(piece);
    }
}

/// The events drawn as warnings, shown even with `--quiet`: a journal that
/// cannot be written (resume and the cache depend on it), a pool running
/// on fewer servers than it launched.
fn warning(event: &Event) -> Option<Diagnostic> {
    match event {
        Event::JournalError { message } => Some(Diagnostic::warning("journal", message.clone())),
        Event::ServerFailed {
            server,
            error,
            up,
            of,
        } => Some(
            Diagnostic::warning(
                "pool-server-failed",
                format!(
                    "server {server} failed to start; the pool goes on with {up} of {of} servers"
                ),
            )
            .with_help(error.clone()),
        ),
        _ => None,
    }
}

/// The progress line of one event; `None` for a journal error, which
/// [`report`] draws as a diagnostic instead.
fn line(event: &Event) -> Option<String> {
    let line = match event {
        Event::JournalError { .. } => return None,
        Event::StepStarted { step, model, calls } => {
            if *calls > 1 {
                format!("start  {step} → {model} ({calls} calls)")
            } else {
                format!("start  {step} → {model}")
            }
        }
        Event::Retrying {
            step,
            model,
            attempt,
            wait,
            error,
        } => {
            format!(
                "retry  {step} on {model} (#{attempt} in {:.1}s): {error}",
                wait.as_secs_f64()
            )
        }
        Event::WaitingForBudget { step, model } => {
            format!(
                "wait   {step} on {model}: the budget has room once other runs' calls in flight settle"
            )
        }
        Event::FallingBack {
            step,
            from,
            to,
            reason,
        } => {
            format!("switch {step}: {from} → {to} ({reason})")
        }
        Event::Escalating {
            step,
            from,
            to,
            reason,
        } => {
            format!("escal. {step}: {from} → {to} ({reason})")
        }
        Event::BatchProgress {
            step,
            provider,
            batch_id,
            status,
            done,
            total,
        } => {
            let counts = if *total > 0 {
                format!(" ({done}/{total} requests)")
            } else {
                String::new()
            };
            format!("batch  {step}: {provider} batch {batch_id} {status}{counts}")
        }
        // Not started now (adopted from a killed run): no start time.
        Event::ServerReady {
            provider,
            command: Some(command),
            ready_after,
        } if ready_after.is_zero() => format!("server {provider}: {command}"),
        Event::ServerReady {
            provider,
            command: Some(command),
            ready_after,
        } => {
            format!(
                "server {provider} started in {:.1}s: {command}",
                ready_after.as_secs_f64()
            )
        }
        Event::ServerReady {
            provider,
            command: None,
            ..
        } => {
            format!("server {provider} already running; using it")
        }
        Event::ServerFailed { .. } => return None,
        Event::StepFinished {
            step,
            status,
            cost_usd,
        } => {
            let cost = if *cost_usd > 0.0 {
                format!(" {}", crate::render::usd(*cost_usd))
            } else {
                String::new()
            };
            match status {
                StepStatus::Succeeded => format!("done   {step}{cost}"),
                other => format!("{:<6} {step}{cost}", short(*other)),
            }
        }
    };
    Some(line)
}

fn short(s: StepStatus) -> &'static str {
    match s {
        StepStatus::Succeeded => "done",
        StepStatus::Failed => "FAILED",
        StepStatus::Skipped => "skip",
        StepStatus::DependencyFailed => "blocked",
        StepStatus::Cancelled => "cancel",
        StepStatus::NotStarted => "-",
    }
}

/// The live view of `tollgate test`: what to do each time a run of a case
/// finishes. A bar of case runs on a terminal; a plain line per run
/// otherwise (CI logs), so a long live suite shows it is moving; nothing
/// with `quiet`.
pub struct TestProgress {
    bar: Option<ProgressBar>,
    lines: bool,
}

impl TestProgress {
    /// `total`: the case runs expected (cases × repeats).
    pub fn new(total: u64, quiet: bool) -> TestProgress {
        let terminal = std::io::stderr().is_terminal();
        let bar = (!quiet && terminal).then(|| {
            let pb = ProgressBar::new(total);
            pb.set_style(
                ProgressStyle::with_template(
                    "{spinner} {pos}/{len} case runs  {elapsed}  {wide_bar}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            pb
        });
        TestProgress {
            bar,
            lines: !quiet && !terminal,
        }
    }

    /// The callback the suite runner calls after every case run; `None`
    /// when there is nothing to show.
    pub fn on_run(&self) -> Option<OnRun> {
        if let Some(bar) = &self.bar {
            let bar = bar.clone();
            return Some(std::sync::Arc::new(
                move |_: &str, _: &str, _: &RunResult| {
                    bar.inc(1);
                },
            ));
        }
        self.lines.then(|| {
            let tell: OnRun = std::sync::Arc::new(|suite: &str, case: &str, r: &RunResult| {
                let outcome = match r.outcome {
                    Outcome::Passed => "passed",
                    Outcome::Failed => "FAILED",
                    Outcome::Errored => "ERROR",
                };
                let _ = writeln!(
                    std::io::stderr().lock(),
                    "{outcome:<6} {suite}/{case} ({} ms)",
                    r.elapsed_ms
                );
            });
            tell
        })
    }

    /// Clears the bar before the summary is printed.
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
