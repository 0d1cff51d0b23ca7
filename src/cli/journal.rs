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
    /// (the password from the URL or PGPASSWORD; never shown); this folder
    /// then keeps the call records the ledger could not take during an
    /// outage (spill-*.sqlite) until they are sent.
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

/// Opens (creating) the journal `run` writes to, having sent what an
/// earlier process spilled (see [`send_spilled`]).
pub fn open(state: &StateArg) -> Result<Arc<Journal>, Diagnostic> {
    let journal = open_unsynced(state)?;
    send_spilled(&journal)?;
    Ok(journal)
}

/// Sends the call records an earlier process on this machine spilled for
/// this ledger, before `run` reads it: a resume must find their answers
/// (never paying for them twice) and budgets must count their spend — so a
/// spill that cannot be sent stops the run, saying why.
pub fn send_spilled(journal: &Journal) -> Result<(), Diagnostic> {
    match journal.sync_spill() {
        Ok(synced) => {
            say_sent(journal, synced);
            Ok(())
        }
        Err(e) => Err(Diagnostic::error("spill", e).with_help(SPILL_HELP)),
    }
}

const SPILL_HELP: &str = "the spill file holds call records the team ledger could not take during an outage; `tollgate ledger sync` sends them once the ledger is reachable. A file that is not tollgate's (or is damaged) can be moved away: its records are then not counted";

/// Says on stderr what was sent from the spill file (nothing when nothing
/// was).
fn say_sent(journal: &Journal, synced: journal::spill::Synced) {
    if synced.is_empty() {
        return;
    }
    let file = journal
        .spill_path()
        .map_or_else(String::new, |p| p.display().to_string());
    eprintln!(
        "tollgate: sent {} kept in {file} to the team ledger {} ({} already there)",
        records(synced.sent),
        journal.path().display(),
        synced.present
    );
}

fn records(n: u64) -> String {
    if n == 1 {
        "1 call record".to_owned()
    } else {
        format!("{n} call records")
    }
}

/// The warning for records still in this ledger's spill file at `path`
/// (`None` when there are none).
pub fn unsent_warning(ledger: &str, path: &Path) -> Option<Diagnostic> {
    let unsent = match journal::spill::unsent(path) {
        Ok(u) if u.records == 0 => return None,
        Ok(u) => u,
        Err(e) => return Some(Diagnostic::warning("spill", e).with_help(SPILL_HELP)),
    };
    Some(
        Diagnostic::warning(
            "spill",
            format!(
                "{} ({} spent) could not be written to the team ledger {ledger} and {} kept in {}: the ledger's report and budgets do not count them yet",
                records(unsent.records),
                crate::render::usd(unsent.cost_usd),
                if unsent.records == 1 { "is" } else { "are" },
                path.display()
            ),
        )
        .with_help(
            "the next command that opens the ledger (run, report, runs) sends them, or `tollgate ledger sync` once it is reachable",
        ),
    )
}

/// `tollgate ledger sync`: sends this machine's spilled records; what it
/// sent and what is left.
pub fn ledger_sync(state: &StateArg) -> Result<Value, Diagnostic> {
    let location = state.location()?;
    let journal::Location::Postgres(url) = &location else {
        return Err(Diagnostic::error(
            "no-ledger",
            "`ledger sync` sends spilled call records to the team ledger, and no team ledger is set",
        )
        .with_help("TOLLGATE_STATE_URL=postgres://USER@HOST:PORT/DATABASE (password in PGPASSWORD), with the --state folder the records were spilled in"));
    };
    let journal = open_unsynced(state)?;
    let synced = journal
        .sync_spill()
        .map_err(|e| Diagnostic::error("spill", e).with_help(SPILL_HELP))?;
    let left = journal
        .unsent()
        .map_err(|e| Diagnostic::error("spill", e).with_help(SPILL_HELP))?;
    Ok(json!({
        "ledger": url.display(),
        "spill": url.spill_path().map(|p| p.display().to_string()),
        "sent": synced.sent,
        "already_there": synced.present,
        "left": left.records,
    }))
}

/// Opens (creating) the journal, sending nothing.
fn open_unsynced(state: &StateArg) -> Result<Arc<Journal>, Diagnostic> {
    let location = state.location()?;
    Journal::open_at(&location, clock()?).map(Arc::new).map_err(|e| {
        let help = match location {
            journal::Location::Dir(_) => "runs are journaled so they can be resumed and reported: point --state (or TOLLGATE_STATE) at a writable folder",
            journal::Location::Postgres(_) => "runs are journaled in the team's database (TOLLGATE_STATE_URL): check that it is up and reachable, and the role's password (PGPASSWORD); unset TOLLGATE_STATE_URL to journal in this checkout instead",
        };
        Diagnostic::error("journal", e).with_help(help)
    })
}

/// Opens the journal for reading, if there is one: a team ledger first
/// gets what this machine spilled for it (a failure is a warning: the
/// report is still worth reading), and the warnings say what is still not
/// in it.
fn open_existing(
    state: &StateArg,
    warnings: &mut Vec<Diagnostic>,
) -> Result<Option<Journal>, Diagnostic> {
    let location = state.location()?;
    let journal = Journal::open_existing_at(&location, clock()?).map_err(|e| {
        // The ledger is out of reach: what this machine holds for it is
        // worth saying too.
        if let journal::Location::Postgres(url) = &location {
            if let Some(path) = url.spill_path() {
                warnings.extend(unsent_warning(url.display(), path));
            }
        }
        Diagnostic::error("journal", e)
    })?;
    if let (Some(j), journal::Location::Postgres(url)) = (&journal, &location) {
        match j.sync_spill() {
            Ok(synced) => say_sent(j, synced),
            Err(e) => warnings.push(Diagnostic::warning("spill", e).with_help(SPILL_HELP)),
        }
        if let Some(path) = url.spill_path() {
            if warnings.is_empty() {
                warnings.extend(unsent_warning(url.display(), path));
            }
        }
    }
    Ok(journal)
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

/// `tollgate runs`; `warnings` gets what the spill says.
pub fn runs(
    state: &StateArg,
    limit: usize,
    warnings: &mut Vec<Diagnostic>,
) -> Result<Vec<RunRow>, Diagnostic> {
    match open_existing(state, warnings)? {
        None => Ok(Vec::new()),
        Some(j) => j.runs(limit).map_err(|e| Diagnostic::error("journal", e)),
    }
}

/// `tollgate report`; `warnings` gets what the spill says.
pub fn report(
    state: &StateArg,
    since: Option<&str>,
    by: &[journal::report::By],
    warnings: &mut Vec<Diagnostic>,
) -> Result<journal::report::Report, Diagnostic> {
    let clock = clock()?;
    let since = since
        .map(|s| journal::parse_since(s, clock.now()))
        .transpose()
        .map_err(|e| Diagnostic::error("bad-since", e))?;
    let journal = match open_existing(state, warnings)? {
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
