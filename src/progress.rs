//! The live view of a run (CLI layer): a progress bar on a terminal, plain
//! lines otherwise (CI logs), both on stderr so stdout stays for results.

use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::run::{Event, StepStatus};

/// Consumes events until the run ends (the sender is dropped).
pub async fn report(mut rx: UnboundedReceiver<Event>, total_steps: u64, quiet: bool) {
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
        let line = match &event {
            Event::JournalError { message } => {
                // Shown even with --quiet: resume and the cache depend on it.
                let line = format!("warning: {message}");
                match &bar {
                    Some(bar) => bar.println(line),
                    None => {
                        let _ = writeln!(std::io::stderr().lock(), "{line}");
                    }
                }
                continue;
            }
            Event::StepStarted { step, model, calls } => {
                running.push(step.clone());
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
                running.retain(|s| s != step);
                if let Some(bar) = &bar {
                    bar.inc(1);
                }
                let cost = if *cost_usd > 0.0 {
                    format!(" ${cost_usd:.6}")
                } else {
                    String::new()
                };
                match status {
                    StepStatus::Succeeded => format!("done   {step}{cost}"),
                    other => format!("{:<6} {step}{cost}", short(*other)),
                }
            }
        };
        if quiet {
            continue;
        }
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
