//! The commands and run options that read or write the run journal:
//! `run --resume`, `runs`, `report`, and the budgets-over-time lines of
//! `plan`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};

use crate::analyze::Analysis;
use crate::diagnostic::Diagnostic;
use crate::inputs::Inputs;
pub use crate::journal::policy_hash;
use crate::journal::{self, Clock, Journal, JournalError, RunRow};
use crate::plan::Plan;
use crate::policy::Policy;

/// `--state DIR`, shared by every command that uses the journal.
#[derive(Debug, Clone, clap::Args)]
pub struct StateArg {
    /// The state folder holding the run journal (state.db) [default:
    /// $TOLLGATE_STATE, else .tollgate/ in the project]. A team's shared
    /// ledger is a PostgreSQL database instead: TOLLGATE_STATE_URL=postgres://…
    /// (the password from the URL or PGPASSWORD; never shown).
    #[arg(long, value_name = "DIR", env = "TOLLGATE_STATE")]
    pub state: Option<PathBuf>,
}

impl StateArg {
    /// Where the journal is: `TOLLGATE_STATE_URL` (PostgreSQL) when set —
    /// an environment variable, not a flag or a policy key, because the URL
    /// is a machine's credentials (argv is visible to every user of the
    /// machine, and the policy is a file the team commits) and because
    /// `runs` and `report` read the journal without any policy — else the
    /// state folder.
    pub fn location(&self) -> Result<journal::Location, Diagnostic> {
        journal::Location::from_env(self.state.as_deref()).map_err(|e| {
            Diagnostic::error("state-url", e).with_help(
                "TOLLGATE_STATE_URL=postgres://USER@HOST:PORT/DATABASE (password in PGPASSWORD)",
            )
        })
    }
}

/// Says (once, before the command runs) that `TOLLGATE_STATE_URL` names a
/// remote ledger reached unverified or in plain text: whoever sits on the
/// path could then pose as the ledger, granting budgets and serving cached
/// answers. A URL that does not parse is left to the command, whose error
/// it is.
pub fn warn_state_url(options: crate::diagnostic::RenderOptions) {
    let Ok(journal::Location::Postgres(url)) = journal::Location::from_env(None) else {
        return;
    };
    if let Some(w) = url.warning() {
        let d = Diagnostic::warning("state-url", w.message.clone()).with_help(w.help.clone());
        super::warn([&d], options);
    }
}

fn clock() -> Result<Clock, Diagnostic> {
    Clock::from_env().map_err(|e| Diagnostic::error("clock", e))
}

/// Opens (creating) the journal `run` writes to.
pub fn open(state: &StateArg) -> Result<Arc<Journal>, Diagnostic> {
    let location = state.location()?;
    Journal::open_at(&location, clock()?).map(Arc::new).map_err(|e| {
        let help = match location {
            journal::Location::Dir(_) => "runs are journaled so they can be resumed and reported: point --state (or TOLLGATE_STATE) at a writable folder",
            journal::Location::Postgres(_) => "runs are journaled in the team's database (TOLLGATE_STATE_URL): check that it is up and reachable, and the role's password (PGPASSWORD); unset TOLLGATE_STATE_URL to journal in this checkout instead",
        };
        Diagnostic::error("journal", e).with_help(help)
    })
}

/// Opens the journal for reading, if there is one.
fn open_existing(state: &StateArg) -> Result<Option<Journal>, Diagnostic> {
    Journal::open_existing_at(&state.location()?, clock()?)
        .map_err(|e| Diagnostic::error("journal", e))
}

/// The run `--resume ID` names, if it can be resumed.
pub fn resume_target(journal: &Journal, id: &str) -> Result<RunRow, Diagnostic> {
    let Some(run) = journal
        .run(id)
        .map_err(|e| Diagnostic::error("journal", e))?
    else {
        return Err(Diagnostic::error(
            "unknown-run",
            format!("no run `{id}` in the journal {}", journal.path().display()),
        )
        .with_help("`tollgate runs` lists the journaled runs; `--resume last` takes the newest"));
    };
    if run.status == "running" {
        let on = if run.machine.is_empty() || run.machine == journal.who().machine {
            String::new()
        } else {
            format!(" on machine {}", run.machine)
        };
        let help = if on.is_empty() {
            "resuming it now would send its calls twice: wait for it, or stop it first"
        } else {
            "resuming it now would send its calls twice: wait for it, or stop it; a run whose process is gone can be resumed from another machine once its lease lapses (a minute after it stopped)"
        };
        return Err(Diagnostic::error(
            "run-in-progress",
            format!("run {} is still running (process {}{on})", run.id, run.pid),
        )
        .with_help(help));
    }
    Ok(run)
}

/// Refuses to resume a run whose workflow changed.
pub fn check_unchanged(run: &RunRow, analysis: &Analysis, path: &Path) -> Result<(), Diagnostic> {
    if journal::fingerprint(analysis) == run.workflow_hash {
        return Ok(());
    }
    Err(Diagnostic::error(
        "resume-changed",
        format!(
            "cannot resume run {}: the workflow {} or one of its prompt files changed since the run started",
            run.id,
            path.display()
        ),
    )
    .with_help(
        "answers to the old prompts would be mixed with calls for the new ones. Run it again without --resume: calls whose requests did not change are answered from the cache at no cost",
    ))
}

/// The inputs a run was started with, as the journal keeps them (an
/// attachment read again from its file, unchanged).
pub fn journaled_inputs(run: &RunRow, analysis: &Analysis) -> Result<Inputs, Vec<Diagnostic>> {
    crate::inputs::journaled(&analysis.workflow.value, &run.inputs)
}

/// Journals a new run (status running) and returns its id.
pub fn begin(
    journal: &Journal,
    analysis: &Analysis,
    workflow_path: &Path,
    policy: &Policy,
    policy_path: &Path,
    inputs: &Inputs,
    plan: &Plan,
) -> Result<String, Diagnostic> {
    journal
        .begin_run(&journal::new_run(
            analysis,
            workflow_path,
            policy,
            policy_path,
            inputs,
            plan,
        ))
        .map_err(|e| Diagnostic::error("journal", e))
}

/// `tollgate runs`.
pub fn runs(state: &StateArg, limit: usize) -> Result<Vec<RunRow>, Diagnostic> {
    match open_existing(state)? {
        None => Ok(Vec::new()),
        Some(j) => j.runs(limit).map_err(|e| Diagnostic::error("journal", e)),
    }
}

/// `tollgate report`.
pub fn report(
    state: &StateArg,
    since: Option<&str>,
    by: &[journal::report::By],
) -> Result<journal::report::Report, Diagnostic> {
    let clock = clock()?;
    let since = since
        .map(|s| journal::parse_since(s, clock.now()))
        .transpose()
        .map_err(|e| Diagnostic::error("bad-since", e))?;
    let journal = match open_existing(state)? {
        Some(j) => j,
        None => Journal::in_memory(clock).map_err(|e| Diagnostic::error("journal", e))?,
    };
    journal::report::build_by(&journal, since, by).map_err(|e| Diagnostic::error("journal", e))
}

/// How often each cascade rule of `policy` escalated in the journal, for
/// the plan's estimate; empty when the policy has no cascade, there is no
/// journal, or it cannot be read (the plan then says it used the default
/// rate).
pub fn escalation_history(state: &StateArg, policy: &Policy) -> crate::plan::EscalationHistory {
    if !has_cascade(policy) {
        return crate::plan::EscalationHistory::new();
    }
    history_in(existing(state).as_deref(), policy)
}

/// Does any rule of `policy` escalate (so its plan reads the history)?
pub fn has_cascade(policy: &Policy) -> bool {
    policy.rules.iter().any(|r| r.escalate.is_some())
}

/// The journal at `state` if there is one already (a database is always
/// there); `None` when there is none yet or it cannot be opened (a command
/// that must write to it opens it with [`open`], which says why).
pub fn existing(state: &StateArg) -> Option<Arc<Journal>> {
    let location = journal::Location::from_env(state.state.as_deref()).ok()?;
    Journal::open_existing_at(&location, Clock::from_env().ok()?)
        .ok()
        .flatten()
        .map(Arc::new)
}

/// [`escalation_history`] from a journal already open (`None`: no journal,
/// no history).
pub fn history_in(j: Option<&Journal>, policy: &Policy) -> crate::plan::EscalationHistory {
    if !has_cascade(policy) {
        return crate::plan::EscalationHistory::new();
    }
    j.and_then(|j| j.escalation_history(&policy.name, 0).ok())
        .unwrap_or_default()
}

/// What is left of the daily and monthly budgets, for `plan`: `None` when
/// the policy sets neither.
pub fn remaining_budgets(state: &StateArg, policy: &Policy) -> Option<Value> {
    if policy.daily_budget_usd.is_none() && policy.monthly_budget_usd.is_none() {
        return None;
    }
    let spent = (|| -> Result<(f64, f64), JournalError> {
        let clock = Clock::from_env()?;
        let location = journal::Location::from_env(state.state.as_deref())?;
        let Some(j) = Journal::open_existing_at(&location, clock)? else {
            return Ok((0.0, 0.0));
        };
        let (day, month) = journal::period_starts(j.now());
        Ok((j.spent_since(day)?, j.spent_since(month)?))
    })();
    let line = |limit: Option<f64>, spent: Result<f64, &JournalError>| {
        limit.map(|l| match spent {
            Ok(s) => json!({"limit_usd": l, "spent_usd": s, "left_usd": (l - s).max(0.0)}),
            // The JSON carries the error as the user reads it.
            Err(e) => json!({"limit_usd": l, "error": e.to_string()}),
        })
    };
    Some(json!({
        "daily": line(policy.daily_budget_usd, spent.as_ref().map(|s| s.0)),
        "monthly": line(policy.monthly_budget_usd, spent.as_ref().map(|s| s.1)),
    }))
}
