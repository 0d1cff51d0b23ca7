//! What a run's step tasks share ([`Shared`]: the analysis, the policy, the
//! providers, the budget, tier usage, what earlier sessions finished), and
//! the adapters from the run to the journal (call and step records,
//! [`JournalSpend`] for budgets over time).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use tokio::sync::mpsc::UnboundedSender;

use super::budget::{Budget, Hold, OutsideSpend, Period, PeriodCheck};
use super::{Event, Providers, Resources, RunOptions, StepStatus};
use crate::analyze::Analysis;
use crate::journal::{CallRecord, EscalatedCall, FinishedCall, Journal, JournalError, SpendCheck};
use crate::policy::Policy;
use crate::route::TierUsage;

/// Everything step tasks share.
pub(super) struct Shared {
    pub(super) analysis: Arc<Analysis>,
    pub(super) policy: Arc<Policy>,
    pub(super) providers: Providers,
    pub(super) inputs: Map<String, Value>,
    /// The bytes of the image and file inputs (`step::Scope::files`).
    pub(super) files: crate::inputs::Files,
    /// The streamed inputs given as files (`step::Scope::streams`).
    pub(super) streams: crate::inputs::Streams,
    pub(super) resources: Arc<Resources>,
    pub(super) budget: Budget,
    pub(super) tiers: Mutex<TierUsage>,
    /// Effective sensitivity level of every step (by step index).
    pub(super) levels: Vec<usize>,
    /// Values of inputs above `cloud_max`: never in a cloud request
    /// (`route::admit`).
    pub(super) withheld: Arc<crate::route::Withheld>,
    /// Calls the plan counted per step; a fan-out whose size was unknown
    /// then corrects the run's total for tier shares when it is known.
    pub(super) planned_calls: HashMap<String, u64>,
    pub(super) options: RunOptions,
    pub(super) events: Option<UnboundedSender<Event>>,
    /// Calls earlier sessions of this run finished, by (step, item).
    pub(super) finished: HashMap<(String, Option<usize>), FinishedCall>,
    /// Calls earlier sessions left escalating: their first answer failed the
    /// cascade's check (a resume goes straight to the escalation).
    pub(super) escalated: HashMap<(String, Option<usize>), EscalatedCall>,
    /// The plan's expected cost of one call of each step.
    pub(super) call_estimates: HashMap<String, f64>,
    /// The steps some step reads the output of: only theirs is handed on
    /// (the dispatcher) and only theirs is always held in memory (a large
    /// fan-out's answers no step reads are spilled: `answers`).
    pub(super) read: HashSet<String>,
}

impl Shared {
    pub(super) fn emit(&self, e: Event) {
        if let Some(tx) = &self.events {
            let _ = tx.send(e);
        }
    }

    /// Writes a call attempt. A paid one is committed before this returns:
    /// a crash must never make it be paid for again. A free one (nothing
    /// charged: a local model, a cache hit, an error that cost nothing) is
    /// only queued — the next call goes out while the writer commits — and
    /// is durable by [`Shared::journal_durable`], which the dispatcher
    /// awaits before a step's dependants start and before the run ends; a
    /// crash before then costs a free call made again, nothing more.
    pub(super) async fn journal_call(&self, record: CallRecord) {
        let Some(j) = &self.options.journal else {
            return;
        };
        let written = if record.cost_usd > 0.0 {
            j.journal.commit_call(&j.run_id, record).await
        } else {
            j.journal.queue_call(&j.run_id, record).await
        };
        if let Err(e) = written {
            self.journal_failed(j, &e);
        }
    }

    /// A journal write failed: said as an event, and kept as the run's
    /// first failure ([`super::RunJournal::failed`]).
    pub(super) fn journal_failed(&self, j: &super::RunJournal, e: &JournalError) {
        let message = e.to_string();
        let _ = j.failed.set(message.clone());
        self.emit(Event::JournalError { message });
    }

    /// Queues a step's status after its calls' records (durable by
    /// [`Shared::journal_durable`]).
    pub(super) fn journal_step(&self, step: &str, status: StepStatus) {
        let Some(j) = &self.options.journal else {
            return;
        };
        if let Err(e) = j.journal.queue_step(&j.run_id, step, status.as_str()) {
            self.journal_failed(j, &e);
        }
    }

    /// Waits until everything this run queued for the journal is committed
    /// (reporting a queued write that failed).
    pub(super) async fn journal_durable(&self) {
        let Some(j) = &self.options.journal else {
            return;
        };
        if let Err(e) = j.journal.flush().await {
            self.journal_failed(j, &e);
        }
    }
}

/// Spending by others in the current UTC day or month and their calls in
/// flight, from the journal.
pub(super) struct JournalSpend(pub(super) Arc<Journal>);

impl OutsideSpend for JournalSpend {
    fn try_hold(&self, amount: f64, checks: &[PeriodCheck]) -> Result<Hold, JournalError> {
        let (day, month) = crate::journal::period_starts(self.0.now());
        let checks: Vec<SpendCheck> = checks
            .iter()
            .map(|c| SpendCheck {
                since: match c.period {
                    Period::Day | Period::UserDay => day,
                    Period::Month => month,
                },
                limit: c.limit,
                local: c.local,
                user: c.period == Period::UserDay,
            })
            .collect();
        Ok(match self.0.try_hold(amount, &checks)? {
            Ok(id) => Hold::Held(id as u64),
            Err((index, spent, in_flight)) => Hold::Over {
                index,
                spent,
                in_flight,
            },
        })
    }

    fn release(&self, hold: u64) {
        // Queued after the call's record (see `Journal::release_hold`). A
        // hold left behind only makes other processes more careful until
        // this one exits.
        let _ = self.0.release_hold(hold as i64);
    }

    fn user(&self) -> Option<String> {
        Some(self.0.who().user.clone())
    }
}
