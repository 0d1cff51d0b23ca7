//! The live view of a run and of a test run (CLI layer): a progress bar on a
//! terminal, plain lines otherwise (CI logs), both on stderr so stdout stays
//! for results. The executor and the suite runner only send events; this is
//! where they meet the terminal.

use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::diagnostic::{self, Diagnostic, RenderOptions};
use crate::eval::results::{Outcome, RunResult};
use crate::eval::runner::OnRun;
use crate::run::{Event, StepStatus};

/// Consumes events until the run ends (the sender is dropped).
pub async fn report(
    mut rx: UnboundedReceiver<Event>,
    total_steps: u64,
    quiet: bool,
    options: RenderOptions,
) {
    let bar = if std::io::stderr().is_terminal() && !quiet {
        let bar = ProgressBar::new(total_steps);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        Some(bar)
    } else {
        None
    };
    let mut running: Vec<String> = Vec::new();
    while let Some(event) = rx.recv().await {
        if let Event::JournalError { message } = &event {
            // Shown even with --quiet: resume and the cache depend on it.
            let d = Diagnostic::warning("journal", message.clone());
            let text = diagnostic::render(&d, options);
            match &bar {
                Some(bar) => bar.println(text.trim_end()),
                None => {
                    let _ = write!(std::io::stderr().lock(), "{text}");
                }
            }
            continue;
        }
        match &event {
            Event::StepStarted { step, .. } => running.push(step.clone()),
            Event::StepFinished { step, .. } => {
                running.retain(|s| s != step);
                if let Some(bar) = &bar {
                    bar.inc(1);
                }
            }
            _ => {}
        }
        if quiet {
            continue;
        }
        let Some(line) = line(&event) else { continue };
        match &bar {
            Some(bar) => {
                bar.set_message(running.join(", "));
                bar.println(line);
            }
            None => {
                let mut err = std::io::stderr().lock();
                let _ = writeln!(err, "{line}");
            }
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
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
