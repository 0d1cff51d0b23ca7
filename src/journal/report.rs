//! `tollgate report`: spending from the journal, grouped by day, workflow,
//! step, model and tier, against the plan's estimates and against what the
//! same calls would have cost on the policy's flagship.
//!
//! Savings are kept apart, and add up: for every call the journal holds its
//! cost, its *list* cost (the same usage at the routed model's standard
//! price; for a cache hit, what the answer cost when it was bought) and its
//! *flagship* cost (the same usage at the flagship's prices, as the plan's
//! all-flagship comparison prices it). Then
//!
//! ```text
//! flagship     = cost + routing + cache + prompt_cache + batch
//! routing      = Σ (flagship − list)        the cheaper model the policy chose
//! cache        = Σ list, over cache hits    answers not bought again
//! prompt_cache = Σ (list − cost), over other synchronous calls: cached
//!                input read at its discount (negative when a cache write
//!                was never read back)
//! batch        = Σ (list − cost), over batch calls (a cached batch input's
//!                discount included)
//! ```
//!
//! Context management is a lever of its own, outside that sum: its calls
//! never sent the cut tokens, so there is no usage to price them from. It
//! is the plan's figure for every step that succeeded (the plan trims the
//! same inputs the run does): `context` (the expected saving on the step's
//! model, negative when chunking on a paid model cost more) and the input
//! tokens not sent.

use std::collections::BTreeMap;

use rusqlite::params;
use serde::Serialize;

use super::{Journal, JournalError, Millis, format_day, format_time};

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Savings {
    pub routing_usd: f64,
    /// The response cache (answers served from the journal).
    pub cache_usd: f64,
    /// Providers' prompt caching (cache reads at their discount).
    pub prompt_cache_usd: f64,
    pub batch_usd: f64,
    /// Context management (trimming, chunking), as planned for the steps
    /// that succeeded; not part of the flagship identity. Both absent from
    /// JSON where no step managed its context.
    #[serde(skip_serializing_if = "is_zero_usd")]
    pub context_usd: f64,
    /// Input tokens context management kept out of the requests.
    #[serde(skip_serializing_if = "is_zero_tokens")]
    pub context_tokens: i64,
}

/// One line of a grouping.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Line {
    pub key: String,
    /// Calls answered by a provider (every attempt that reached one).
    pub calls: u64,
    /// Calls answered from the response cache.
    pub cache_hits: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    /// The plans' expected cost, where the grouping has one (workflow, step).
    pub estimate_usd: Option<f64>,
    pub flagship_usd: f64,
    pub savings: Savings,
    /// Calls whose answer reported usage or a cost that was not believed
    /// (absurd counts, a negative or huge cost; see `cost::charge`): their
    /// cost is tollgate's judgement, not the provider's word.
    #[serde(skip_serializing_if = "is_zero")]
    pub untrusted_calls: u64,
    /// Calls charged above the worst case reserved for them (believable
    /// counts above tollgate's, or the provider's own higher price).
    #[serde(skip_serializing_if = "is_zero")]
    pub above_reserve_calls: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_zero_usd(x: &f64) -> bool {
    *x == 0.0
}

fn is_zero_tokens(n: &i64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    /// The first moment counted (UTC), when `--since` was given.
    pub since: Option<String>,
    pub runs: u64,
    pub totals: Line,
    pub by_day: Vec<Line>,
    pub by_workflow: Vec<Line>,
    pub by_step: Vec<Line>,
    pub by_model: Vec<Line>,
    pub by_tier: Vec<Line>,
    /// Who ran it (`report --by user|machine|ci`): present only when asked
    /// for. A run journaled before who ran it was recorded, and a run
    /// outside CI for `by_ci`, is keyed `-`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by_user: Option<Vec<Line>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by_machine: Option<Vec<Line>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by_ci: Option<Vec<Line>>,
    /// Every cascade rule (by policy) that made calls in the window.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cascades: Vec<CascadeLine>,
    /// Calls made through a pool, by `provider endpoint` (the endpoint
    /// that answered); absent when no pool answered in the window.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub by_endpoint: Vec<Line>,
}

/// A cascade rule's calls: how often the first answer escalated, what
/// both sides cost, and what sending every call to the target would have.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CascadeLine {
    /// `policy/rule`.
    pub key: String,
    /// First answers (the cheap model's, cache hits included).
    pub first_answers: u64,
    /// Of those, the ones that failed the check.
    pub escalated: u64,
    pub escalation_rate: f64,
    /// What the first calls cost.
    pub first_cost_usd: f64,
    /// What the escalated calls cost.
    pub escalated_cost_usd: f64,
    /// Estimated: every first answer at the average cost of an escalated
    /// call (`None` before the first escalation answered).
    pub all_on_target_usd: Option<f64>,
    /// `all_on_target_usd` minus what the cascade cost.
    pub saved_usd: Option<f64>,
}

/// A cascade rule's sums over the calls finished in the window, as both
/// dialects read them (`pg_sql::report_cascades` is the PostgreSQL one).
pub(super) struct CascadeSums {
    /// `policy/rule`.
    pub(super) key: String,
    pub(super) first_answers: i64,
    pub(super) escalated: i64,
    pub(super) first_cost: f64,
    pub(super) escalated_cost: f64,
    /// Escalated calls that answered.
    pub(super) answered: i64,
    /// What the cached escalations saved (their price when bought).
    pub(super) cached_saved: f64,
}

impl CascadeSums {
    fn line(self) -> CascadeLine {
        let first_answers = self.first_answers.max(0) as u64;
        let escalated = self.escalated.max(0) as u64;
        let answered = self.answered.max(0) as u64;
        // A cached escalation is priced at what it cost when bought.
        let bought = self.escalated_cost + self.cached_saved;
        let all = (answered > 0).then(|| bought / answered as f64 * first_answers as f64);
        CascadeLine {
            key: self.key,
            first_answers,
            escalated,
            escalation_rate: if first_answers > 0 {
                escalated as f64 / first_answers as f64
            } else {
                0.0
            },
            first_cost_usd: self.first_cost,
            escalated_cost_usd: self.escalated_cost,
            all_on_target_usd: all,
            saved_usd: all.map(|a| a - self.first_cost - self.escalated_cost),
        }
    }
}

/// The cascade sums of the calls finished at or after `from` (SQLite).
fn lite_cascades(
    conn: &rusqlite::Connection,
    from: Millis,
) -> Result<Vec<CascadeSums>, JournalError> {
    let mut stmt = conn.prepare(
        "SELECT r.policy || '/' || c.cascade_rule,
                SUM(c.escalated_from IS NULL AND c.outcome IN ('ok', 'escalated', 'cached', 'truncated')),
                SUM(c.escalated_from IS NULL AND c.outcome = 'escalated'),
                SUM(CASE WHEN c.escalated_from IS NULL THEN MAX(c.cost_usd, 0) ELSE 0 END),
                SUM(CASE WHEN c.escalated_from IS NOT NULL THEN MAX(c.cost_usd, 0) ELSE 0 END),
                SUM(c.escalated_from IS NOT NULL AND c.outcome IN ('ok', 'cached', 'truncated')),
                SUM(CASE WHEN c.escalated_from IS NOT NULL AND c.from_cache THEN c.saved_usd ELSE 0 END)
             FROM calls c JOIN runs r ON r.id = c.run_id
             WHERE c.cascade_rule IS NOT NULL AND c.finished_ms >= ?1
             GROUP BY 1",
    )?;
    let sums = stmt
        .query_map(params![from], |r| {
            Ok(CascadeSums {
                key: r.get(0)?,
                first_answers: r.get(1)?,
                escalated: r.get(2)?,
                first_cost: r.get(3)?,
                escalated_cost: r.get(4)?,
                answered: r.get(5)?,
                cached_saved: r.get(6)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(sums)
}

/// A split of the report by who ran the calls' runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    User,
    Machine,
    Ci,
}

impl By {
    /// The name of the split, as flags and JSON keys say it.
    pub fn name(self) -> &'static str {
        match self {
            By::User => "user",
            By::Machine => "machine",
            By::Ci => "ci",
        }
    }

    /// A run's key in this split.
    pub fn key(self, run: &super::RunRow) -> String {
        who_key(match self {
            By::User => &run.user,
            By::Machine => &run.machine,
            By::Ci => &run.ci,
        })
    }
}

/// Listed runs of one user, machine or CI system (`runs --by`).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RunGroup {
    pub key: String,
    pub runs: u64,
    pub succeeded: u64,
    /// Every other end: failed, cancelled, timed out, interrupted, running.
    pub other: u64,
    pub cost_usd: f64,
}

/// The runs listed, grouped by `by` (ordered by key).
pub fn runs_by(runs: &[super::RunRow], by: By) -> Vec<RunGroup> {
    let mut groups: BTreeMap<String, RunGroup> = BTreeMap::new();
    for r in runs {
        let key = by.key(r);
        let g = groups.entry(key.clone()).or_insert_with(|| RunGroup {
            key,
            ..RunGroup::default()
        });
        g.runs += 1;
        if r.status == "succeeded" {
            g.succeeded += 1;
        } else {
            g.other += 1;
        }
        g.cost_usd = nano(g.cost_usd + r.cost_usd.max(0.0));
    }
    groups.into_values().collect()
}

/// A who-value as a report key: cleaned (it was read from a database
/// others write to), `-` when empty.
fn who_key(v: &str) -> String {
    let v = super::who::clean(v);
    if v.is_empty() { "-".to_owned() } else { v }
}

struct CallRow {
    finished_ms: Millis,
    user: String,
    machine: String,
    ci: String,
    workflow: String,
    step: String,
    model: String,
    provider_model: String,
    tier: String,
    from_cache: bool,
    reached_provider: bool,
    input_tokens: u64,
    output_tokens: u64,
    cost: f64,
    list: f64,
    flagship: f64,
    saved: f64,
    batch: bool,
    flag: Option<String>,
    /// A pool's call: `provider endpoint`.
    endpoint: Option<String>,
}

/// A pool call's key in `by_endpoint`: its provider (the pool) and the
/// endpoint that answered, cleaned (read from a database others write to).
fn endpoint_key(provider: String, endpoint: Option<String>) -> Option<String> {
    let clean = |t: &str| -> String {
        t.chars()
            .take(256)
            .map(|c| if c.is_control() { '?' } else { c })
            .collect()
    };
    endpoint.map(|e| format!("{} {}", clean(&provider), clean(&e)))
}

impl Line {
    fn add(&mut self, c: &CallRow) {
        if c.from_cache {
            self.cache_hits += 1;
            self.savings.cache_usd += c.saved;
        } else if c.reached_provider {
            self.calls += 1;
        }
        let flag = c.flag.as_deref().unwrap_or_default();
        self.untrusted_calls += u64::from(flag.starts_with(crate::cost::UNTRUSTED));
        self.above_reserve_calls += u64::from(flag.starts_with(crate::cost::ABOVE_RESERVE));
        self.input_tokens += c.input_tokens;
        self.output_tokens += c.output_tokens;
        self.cost_usd += c.cost;
        self.flagship_usd += c.flagship;
        // A cache hit's list cost is what it saved; routing is measured on
        // the answer either way.
        let list = if c.from_cache { c.saved } else { c.list };
        self.savings.routing_usd += c.flagship - list;
        if c.batch {
            self.savings.batch_usd += c.list - c.cost;
        } else if !c.from_cache {
            self.savings.prompt_cache_usd += c.list - c.cost;
        }
    }
}

fn group(
    rows: &[CallRow],
    key: impl Fn(&CallRow) -> String,
    estimates: &BTreeMap<String, f64>,
    with_estimates: bool,
) -> Vec<Line> {
    let mut lines: BTreeMap<String, Line> = BTreeMap::new();
    for r in rows {
        let k = key(r);
        lines
            .entry(k.clone())
            .or_insert_with(|| Line {
                key: k,
                ..Line::default()
            })
            .add(r);
    }
    if with_estimates {
        for (k, e) in estimates {
            lines
                .entry(k.clone())
                .or_insert_with(|| Line {
                    key: k.clone(),
                    ..Line::default()
                })
                .estimate_usd = Some(*e);
        }
    }
    lines.into_values().collect()
}

/// [`group`] over some of the rows, without estimates.
fn group_refs(rows: &[&CallRow], key: impl Fn(&CallRow) -> String) -> Vec<Line> {
    let mut lines: BTreeMap<String, Line> = BTreeMap::new();
    for r in rows {
        let k = key(r);
        lines
            .entry(k.clone())
            .or_insert_with(|| Line {
                key: k,
                ..Line::default()
            })
            .add(r);
    }
    lines.into_values().collect()
}

/// A step's plan in a run started in the window: workflow, step, estimated
/// dollars, whether it succeeded, and its context management (input
/// tokens not sent, expected dollars saved).
pub(super) type Estimate = (String, String, f64, bool, i64, f64);

/// What `report` reads: every call finished in the window, the plans'
/// estimates of the runs started in it, how many runs started, and the
/// cascades' sums.
type Reads = (Vec<CallRow>, Vec<Estimate>, i64, Vec<CascadeSums>);

/// Builds the report of every call finished at or after `since`.
pub fn build(journal: &Journal, since: Option<Millis>) -> Result<Report, JournalError> {
    build_by(journal, since, &[])
}

/// [`build`], split by who ran the calls' runs as `by` asks.
pub fn build_by(
    journal: &Journal,
    since: Option<Millis>,
    by: &[By],
) -> Result<Report, JournalError> {
    let from = since.unwrap_or(i64::MIN);
    let (rows, estimates, runs, cascades) =
        journal.read(|conn| lite_reads(conn, from), move |c, _| pg_reads(c, from))?;
    let mut by_workflow_est: BTreeMap<String, f64> = BTreeMap::new();
    let mut by_step_est: BTreeMap<String, f64> = BTreeMap::new();
    let mut context: BTreeMap<String, (i64, f64)> = BTreeMap::new();
    let mut context_total = (0i64, 0.0f64);
    for (w, s, usd, succeeded, tokens, saved) in estimates {
        *by_step_est.entry(format!("{w}/{s}")).or_default() += usd;
        *by_workflow_est.entry(w.clone()).or_default() += usd;
        if succeeded && (tokens != 0 || saved != 0.0) {
            for key in [format!("step:{w}/{s}"), format!("workflow:{w}")] {
                let c = context.entry(key).or_default();
                c.0 += tokens;
                c.1 += saved;
            }
            context_total.0 += tokens;
            context_total.1 += saved;
        }
    }
    let mut cascades: Vec<CascadeLine> = cascades.into_iter().map(CascadeSums::line).collect();
    // Both dialects sort text their own way: the order is made here.
    cascades.sort_by(|a, b| a.key.cmp(&b.key));

    let none = BTreeMap::new();
    let mut totals = Line {
        key: "total".to_owned(),
        ..Line::default()
    };
    for r in &rows {
        totals.add(r);
    }
    totals.estimate_usd = Some(by_workflow_est.values().sum());
    let mut report = Report {
        since: since.map(format_time),
        runs: runs as u64,
        totals,
        by_day: group(&rows, |r| format_day(r.finished_ms), &none, false),
        by_workflow: group(&rows, |r| r.workflow.clone(), &by_workflow_est, true),
        by_step: group(
            &rows,
            |r| format!("{}/{}", r.workflow, r.step),
            &by_step_est,
            true,
        ),
        by_model: group(
            &rows,
            |r| format!("{} ({})", r.model, r.provider_model),
            &none,
            false,
        ),
        by_tier: group(&rows, |r| r.tier.clone(), &none, false),
        by_user: by
            .contains(&By::User)
            .then(|| group(&rows, |r| who_key(&r.user), &none, false)),
        by_machine: by
            .contains(&By::Machine)
            .then(|| group(&rows, |r| who_key(&r.machine), &none, false)),
        by_ci: by
            .contains(&By::Ci)
            .then(|| group(&rows, |r| who_key(&r.ci), &none, false)),
        cascades,
        by_endpoint: {
            let pooled: Vec<&CallRow> = rows.iter().filter(|r| r.endpoint.is_some()).collect();
            group_refs(&pooled, |r| r.endpoint.clone().unwrap_or_default())
        },
    };
    (
        report.totals.savings.context_tokens,
        report.totals.savings.context_usd,
    ) = context_total;
    let lines = report
        .by_workflow
        .iter_mut()
        .map(|l| ("workflow", l))
        .chain(report.by_step.iter_mut().map(|l| ("step", l)));
    for (kind, line) in lines {
        if let Some(&(tokens, usd)) = context.get(&format!("{kind}:{}", line.key)) {
            line.savings.context_tokens = tokens;
            line.savings.context_usd = usd;
        }
    }
    for line in std::iter::once(&mut report.totals)
        .chain(&mut report.by_day)
        .chain(&mut report.by_workflow)
        .chain(&mut report.by_step)
        .chain(&mut report.by_model)
        .chain(&mut report.by_tier)
        .chain(report.by_user.iter_mut().flatten())
        .chain(report.by_machine.iter_mut().flatten())
        .chain(report.by_ci.iter_mut().flatten())
        .chain(&mut report.by_endpoint)
    {
        line.round();
    }
    Ok(report)
}

/// To a nano-dollar: sums of the same calls added in another order (parallel
/// steps finish in any order) then print the same.
fn nano(x: f64) -> f64 {
    (x * 1e9).round() / 1e9
}

impl Line {
    fn round(&mut self) {
        self.cost_usd = nano(self.cost_usd);
        self.estimate_usd = self.estimate_usd.map(nano);
        self.flagship_usd = nano(self.flagship_usd);
        self.savings.routing_usd = nano(self.savings.routing_usd);
        self.savings.cache_usd = nano(self.savings.cache_usd);
        self.savings.prompt_cache_usd = nano(self.savings.prompt_cache_usd);
        self.savings.batch_usd = nano(self.savings.batch_usd);
        self.savings.context_usd = nano(self.savings.context_usd);
    }
}

/// Whether a call reached a provider (an over-budget refusal did not).
fn reached(outcome: &str) -> bool {
    outcome.parse::<crate::outcome::AttemptOutcome>()
        != Ok(crate::outcome::AttemptOutcome::OverBudget)
}

fn lite_reads(conn: &rusqlite::Connection, from: Millis) -> Result<Reads, JournalError> {
    let mut stmt = conn.prepare(
        "SELECT c.finished_ms, r.workflow, c.step, c.model, c.provider_model, c.tier, c.from_cache,
                c.outcome, c.input_tokens, c.output_tokens, c.cost_usd, c.list_cost_usd,
                c.flagship_cost_usd, c.saved_usd, c.batch, c.usage_flag, r.user_name, r.machine,
                r.ci, c.provider, c.endpoint
             FROM calls c JOIN runs r ON r.id = c.run_id
             WHERE c.finished_ms >= ?1 ORDER BY c.id",
    )?;
    let rows: Vec<CallRow> = stmt
        .query_map(params![from], |r| {
            let outcome: String = r.get(7)?;
            Ok(CallRow {
                finished_ms: r.get(0)?,
                workflow: r.get(1)?,
                step: r.get(2)?,
                model: r.get(3)?,
                provider_model: r.get(4)?,
                tier: r.get(5)?,
                from_cache: r.get(6)?,
                reached_provider: reached(&outcome),
                input_tokens: r.get::<_, i64>(8)?.max(0) as u64,
                output_tokens: r.get::<_, i64>(9)?.max(0) as u64,
                // An older build journaled what a server said, negative
                // costs included: they never count as money saved.
                cost: r.get::<_, f64>(10)?.max(0.0),
                list: r.get(11)?,
                flagship: r.get(12)?,
                saved: r.get(13)?,
                batch: r.get(14)?,
                flag: r.get(15)?,
                user: r.get(16)?,
                machine: r.get(17)?,
                ci: r.get(18)?,
                endpoint: endpoint_key(r.get(19)?, r.get(20)?),
            })
        })?
        .collect::<Result<_, _>>()?;
    // Estimates come from the plans of the runs started in the window, and
    // so does context management (for the steps that succeeded).
    let mut stmt = conn.prepare(
        "SELECT r.workflow, s.step, s.estimate_usd, s.status = 'succeeded',
                s.context_tokens_before - s.context_tokens_after, s.context_saved_usd
             FROM steps s JOIN runs r ON r.id = s.run_id
             WHERE r.started_ms >= ?1",
    )?;
    let estimates = stmt
        .query_map(params![from], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })?
        .collect::<Result<_, _>>()?;
    let runs: i64 = conn.query_row(
        "SELECT COUNT(*) FROM runs WHERE started_ms >= ?1",
        params![from],
        |r| r.get(0),
    )?;
    Ok((rows, estimates, runs, lite_cascades(conn, from)?))
}

fn pg_reads(c: &mut super::pg::PgConn, from: Millis) -> Result<Reads, JournalError> {
    use super::pg::get;
    let rows = super::pg_sql::report_calls(c, from)?
        .iter()
        .map(|r| {
            let outcome: String = get(r, 7)?;
            Ok(CallRow {
                finished_ms: get(r, 0)?,
                workflow: get(r, 1)?,
                step: get(r, 2)?,
                model: get(r, 3)?,
                provider_model: get(r, 4)?,
                tier: get(r, 5)?,
                from_cache: get(r, 6)?,
                reached_provider: reached(&outcome),
                input_tokens: get::<i64>(r, 8)?.max(0) as u64,
                output_tokens: get::<i64>(r, 9)?.max(0) as u64,
                cost: get::<f64>(r, 10)?.max(0.0),
                list: get(r, 11)?,
                flagship: get(r, 12)?,
                saved: get(r, 13)?,
                batch: get(r, 14)?,
                flag: get(r, 15)?,
                user: get(r, 16)?,
                machine: get(r, 17)?,
                ci: get(r, 18)?,
                endpoint: endpoint_key(get(r, 19)?, get(r, 20)?),
            })
        })
        .collect::<Result<_, JournalError>>()?;
    let estimates = super::pg_sql::report_estimates(c, from)?;
    let runs = super::pg_sql::runs_since(c, from)?;
    let cascades = super::pg_sql::report_cascades(c, from)?;
    Ok((rows, estimates, runs, cascades))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(cost: f64, list: f64, flagship: f64, from_cache: bool, batch: bool) -> CallRow {
        CallRow {
            finished_ms: 0,
            workflow: "w".into(),
            step: "s".into(),
            model: "m".into(),
            provider_model: "pm".into(),
            tier: "budget".into(),
            from_cache,
            reached_provider: !from_cache,
            input_tokens: 10,
            output_tokens: 1,
            cost: if from_cache { 0.0 } else { cost },
            list: if from_cache { 0.0 } else { list },
            flagship,
            saved: if from_cache { list } else { 0.0 },
            batch,
            flag: None,
            user: String::new(),
            machine: String::new(),
            ci: String::new(),
            endpoint: None,
        }
    }

    #[test]
    fn every_saving_is_counted_once_and_they_add_up_to_the_flagship() {
        let mut line = Line::default();
        // Plain, prompt-cached, batched, and a response-cache hit.
        for c in [
            call(1.0, 1.0, 5.0, false, false),
            call(0.4, 1.0, 5.0, false, false),
            call(0.5, 1.0, 5.0, false, true),
            call(0.0, 1.0, 5.0, true, false),
        ] {
            line.add(&c);
        }
        let s = &line.savings;
        assert_eq!(s.prompt_cache_usd, 0.6);
        assert_eq!(s.batch_usd, 0.5);
        assert_eq!(s.cache_usd, 1.0);
        assert_eq!(s.routing_usd, 16.0);
        let sum = line.cost_usd + s.routing_usd + s.cache_usd + s.prompt_cache_usd + s.batch_usd;
        assert!(
            (sum - line.flagship_usd).abs() < 1e-12,
            "{sum} vs {}",
            line.flagship_usd
        );
    }
}
