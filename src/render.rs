//! Human-readable text of the plan, the run summary, `runs`, `report` and
//! the budgets left. Stable: the same plan gives the same bytes, so plans
//! can be reviewed in pull requests and snapshot-tested.
//!
//! The warnings written here (a prompt cache that will not apply, answers
//! cut at `max_output_tokens`, usage not believed) stay lines of the table
//! they belong to rather than diagnostics: each is a fact about one row of
//! a plan or a run, not about a file's content, and the JSON output carries
//! the same facts as fields. Rendering never prints.

use std::fmt::Write as _;

use crate::inputs::ValueSource;
use crate::plan::{CostRange, Plan, Status, StepPlan};
use crate::policy::Locality;
use crate::route::Decider;
use crate::run::{RunReport, RunStatus, StepStatus};

/// Dollars with enough digits to tell small costs apart, fixed per magnitude.
pub fn usd(x: f64) -> String {
    if x < 0.0 {
        format!("-{}", usd(-x))
    } else if x == 0.0 {
        "$0".to_owned()
    } else if x >= 1.0 {
        format!("${x:.2}")
    } else if x >= 0.01 {
        format!("${x:.4}")
    } else if x < 1e-10 {
        // Below any real price of a call; never shown as a bare zero.
        "<$0.0000000001".to_owned()
    } else {
        // Under a cent: at least six decimals, and two significant digits
        // however small (a call of a few tokens costs millionths of a
        // dollar; `$0.000000` would read as free).
        let decimals = ((-x.log10()).floor() as usize + 2).clamp(6, 10);
        let text = format!("{x:.decimals$}");
        let min_len = "0.".len() + 6;
        let trimmed = text.trim_end_matches('0');
        format!(
            "${}",
            if trimmed.len() < min_len {
                &text[..min_len]
            } else {
                trimmed
            }
        )
    }
}

fn range(c: CostRange) -> String {
    if c.low == c.high {
        usd(c.low)
    } else {
        format!("{} – {}", usd(c.low), usd(c.high))
    }
}

fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// Renders a plan as text.
pub fn plan_text(plan: &Plan) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "Plan for workflow {} ({})",
        plan.workflow.name, plan.workflow.path
    );
    let _ = writeln!(
        o,
        "  policy       {} ({})",
        plan.policy.name, plan.policy.path
    );
    if !plan.inputs.is_empty() {
        let inputs: Vec<String> = plan
            .inputs
            .iter()
            .map(|i| {
                let src = match (&i.streamed, i.source) {
                    (Some(s), _) => format!("streamed from {}, {} items", s.file, s.items),
                    (None, ValueSource::Given) => "given".to_owned(),
                    (None, ValueSource::Default) => "default".to_owned(),
                    (None, ValueSource::Example) => "example value".to_owned(),
                };
                format!("{} ({src}, {})", i.name, i.sensitivity)
            })
            .collect();
        let _ = writeln!(o, "  inputs       {}", inputs.join(", "));
    }
    for s in &plan.servers {
        let addresses: Vec<String> = s
            .addresses
            .iter()
            .map(|a| format!("{} ({})", a.address, plural(u64::from(a.slots), "slot")))
            .collect();
        let _ = writeln!(
            o,
            "  launches     {}: {} on {}, unless already running; stopped when the run ends",
            s.provider,
            s.server,
            addresses.join(", ")
        );
    }
    for (n, s) in plan.steps.iter().enumerate() {
        o.push('\n');
        step(&mut o, n + 1, s);
    }
    o.push('\n');
    totals(&mut o, plan);
    o
}

fn step(o: &mut String, n: usize, s: &StepPlan) {
    let _ = writeln!(
        o,
        "{n}. {}  [task {}, reasoning {}, latency {}]",
        s.id,
        s.task,
        s.reasoning.name(),
        s.latency.name()
    );
    if !s.depends_on.is_empty() {
        let _ = writeln!(o, "   after        {}", s.depends_on.join(", "));
    }
    match &s.status {
        Status::Runs => {}
        Status::Conditional(why) => {
            let _ = writeln!(o, "   runs if      {why} (decided at run time)");
        }
        Status::Skipped(why) => {
            let _ = writeln!(o, "   skipped      {why}");
        }
    }
    let origin = match &s.sensitivity.origin {
        crate::sensitivity::Origin::Default => "policy default".to_owned(),
        other => format!("from {other}"),
    };
    let gate = if s.sensitivity.cloud_allowed {
        ""
    } else {
        ", local models only"
    };
    let _ = writeln!(
        o,
        "   sensitivity  {} ({origin}{gate})",
        s.sensitivity.level
    );
    if let Some(f) = &s.fan_out {
        if f.known {
            let _ = writeln!(
                o,
                "   for each     {} (one call each)",
                plural(f.items, "item")
            );
        } else {
            let _ = writeln!(
                o,
                "   for each     list known at run time; priced as 1 call"
            );
        }
    }
    match &s.model {
        Some(m) => {
            let place = match m.locality {
                Locality::Local => "local",
                Locality::Cloud => "cloud",
            };
            let pool = match m.endpoints {
                Some(n) => format!(", pool of {n} endpoints"),
                None => String::new(),
            };
            let _ = writeln!(
                o,
                "   model        {} → {} {} ({} tier, {place}{pool})",
                m.alias, m.provider, m.model, m.tier
            );
        }
        None => {
            let _ = writeln!(o, "   model        none");
        }
    }
    if let Some(r) = &s.reasoning_knob {
        let _ = writeln!(o, "   reasoning    {}: {}", s.reasoning.name(), r.detail);
    }
    match &s.route.decider {
        Some(Decider::Rule { name, matched, .. }) => {
            let _ = writeln!(o, "   rule         {name} ({})", matched.join(", "));
        }
        Some(Decider::Pin { model }) => {
            let _ = writeln!(o, "   rule         pinned by the step to {model}");
        }
        None => {}
    }
    for r in &s.route.passed_over {
        let _ = writeln!(o, "   passed over  {}: {}", r.model, r.why);
    }
    if matches!(s.status, Status::Skipped(_)) {
        return;
    }
    let t = &s.tokens;
    let exact = if t.input_exact {
        format!("exact, {}", t.tokenizer.map_or("", |t| t.name()))
    } else if t.attachments > 0 {
        format!(
            "≈ {} of them images and PDFs, by the provider's rule",
            t.attachments
        )
    } else {
        match t.tokenizer {
            Some(tok) if tok.is_exact() => {
                format!("≈ {} with upstream outputs estimated", tok.name())
            }
            _ => "≈ estimate".to_owned(),
        }
    };
    let worst_in = if t.input_worst != t.input {
        format!(", up to {}", t.input_worst)
    } else {
        String::new()
    };
    let _ = writeln!(
        o,
        "   tokens       in {}{worst_in} ({exact}); out ~{} expected, {} max",
        t.input, t.output_expected, t.output_max
    );
    for r in &s.routers {
        let verdict = match (r.score, r.threshold) {
            (Some(score), Some(t)) if r.holds => format!("score {score:.3} > {t:.3}: holds"),
            (Some(score), Some(t)) => format!("score {score:.3} ≤ {t:.3}: does not hold"),
            _ => "no call to score: does not hold".to_owned(),
        };
        let _ = writeln!(o, "   router       rule {}: {} {verdict}", r.rule, r.file);
    }
    if let Some(r) = &s.retrieval {
        let _ = writeln!(
            o,
            "   retrieval    {} of {} from {}: ≈{} of {} document tokens sent",
            r.retrieved,
            plural(r.chunks as u64, "chunk"),
            plural(r.documents as u64, "document"),
            r.retrieved_tokens,
            r.document_tokens
        );
    }
    if let Some(h) = &s.history {
        let mut parts = vec![format!("last {} sent", h.sent)];
        if h.summarized > 0 {
            parts.push(format!("{} summarized", h.summarized));
        }
        if h.dropped > 0 {
            parts.push(format!("{} dropped", h.dropped));
        }
        let _ = writeln!(
            o,
            "   history      {}: {}; ≈{} → {} tokens",
            plural(h.turns as u64, "turn"),
            parts.join(", "),
            h.tokens_before,
            h.tokens_after
        );
    }
    if let Some(c) = &s.prompt_cache {
        let model = s.model.as_ref().map_or("", |m| m.model.as_str());
        if c.shared_prefix_tokens > 0 {
            let _ = writeln!(
                o,
                "   prompt cache shared prefix ≈{} tokens (every call's first lines), marked for caching (ttl {}); ≈{} tokens expected from the cache",
                c.shared_prefix_tokens,
                c.ttl.name(),
                c.expected_read_tokens
            );
        }
        if c.cacheable {
            let _ = writeln!(
                o,
                "   prompt cache system prompt ≈{} tokens, marked for caching (ttl {})",
                c.prefix_tokens,
                c.ttl.name()
            );
        } else if c.shared_prefix_tokens > 0 {
            // The shared prefix is what is cached.
        } else if c.prefix_tokens == 0 {
            let _ = writeln!(
                o,
                "   prompt cache warning: no system prompt to cache; the policy asks for caching on {model}"
            );
        } else {
            let _ = writeln!(
                o,
                "   prompt cache warning: system prompt ≈{} tokens is below the {} minimum {model} caches; not cached",
                c.prefix_tokens, c.min_tokens
            );
        }
    }
    let free = s
        .model
        .as_ref()
        .is_some_and(|m| m.locality == Locality::Local)
        && s.cost.high == 0.0;
    let note = if free {
        " (local)"
    } else if s.batch {
        " (batch API, batch prices)"
    } else {
        ""
    };
    if let Some(c) = &s.cascade {
        let when: Vec<&str> = c.when.iter().map(|w| w.name()).collect();
        let place = match c.to.locality {
            Locality::Local => "local",
            Locality::Cloud => "cloud",
        };
        let _ = writeln!(
            o,
            "   cascade      {} → {} {} ({} tier, {place}) when {}",
            s.model.as_ref().map_or("-", |m| m.alias.as_str()),
            c.to.alias,
            c.to.model,
            c.to.tier,
            when.join(", ")
        );
        let rate = match &c.rate_source {
            crate::plan::RateSource::History { escalated, answers } => format!(
                "{:.0}% escalate ({escalated} of {answers} first answers in the journal)",
                c.rate * 100.0
            ),
            crate::plan::RateSource::Default => format!(
                "{:.0}% escalate (default: no history of rule {} in the journal)",
                c.rate * 100.0,
                c.rule
            ),
        };
        let _ = writeln!(
            o,
            "   escalation   {rate}; first calls {}, all escalated {}",
            range(c.first_cost),
            range(c.escalated_cost)
        );
        if let Some(j) = &c.judge {
            let place = match j.model.locality {
                Locality::Local => "local",
                Locality::Cloud => "cloud",
            };
            let _ = writeln!(
                o,
                "   judge        {} {} ({} tier, {place}{}) on every first answer: {}",
                j.model.alias,
                j.model.model,
                j.model.tier,
                j.rule
                    .as_ref()
                    .map_or(String::new(), |r| format!(", rule {r}")),
                range(j.cost)
            );
        }
    }
    let note = if s.cascade.is_some() {
        " (expected at the escalation rate; worst case every call escalates)"
    } else {
        note
    };
    let _ = writeln!(o, "   cost         {}{note}", range(s.cost));
    if let Some(c) = &s.context {
        context_line(o, c);
    }
}

/// A step's context management: the strategy, tokens before and after,
/// what was cut, extra calls and the net saving on its model.
fn context_line(o: &mut String, c: &crate::plan::ContextPlan) {
    let e = &c.effect;
    let mut what = e.strategy.clone();
    if let Some(n) = e.chunks {
        what.push_str(&format!(
            " into {} (+{})",
            plural(n, "chunk"),
            plural(c.extra_calls, "call")
        ));
    }
    let _ = writeln!(
        o,
        "   context      {what}; in {} → {} tokens; {}",
        e.tokens_before,
        e.tokens_after,
        saved(c.saved_usd)
    );
    for cut in &e.cut {
        let _ = writeln!(
            o,
            "                cut inputs.{}: {} → {} tokens",
            cut.input, cut.tokens_before, cut.tokens_kept
        );
    }
}

/// "saved $x" or "costs $x more" (expected).
fn saved(usd_: f64) -> String {
    if usd_ >= 0.0 {
        format!("saved {} expected", usd(usd_))
    } else {
        format!("costs {} more expected", usd(-usd_))
    }
}

fn totals(o: &mut String, plan: &Plan) {
    let t = &plan.totals;
    let _ = writeln!(o, "Totals");
    let mut calls = t.calls.to_string();
    if t.conditional_calls > 0 {
        calls.push_str(&format!(" ({} conditional, counted)", t.conditional_calls));
    }
    if t.skipped_steps > 0 {
        calls.push_str(&format!("; {} skipped", plural(t.skipped_steps, "step")));
    }
    let _ = writeln!(o, "  calls        {calls}");
    let _ = writeln!(
        o,
        "  cost         {} expected, {} worst case",
        usd(t.cost.low),
        usd(t.cost.high)
    );
    for (i, tier) in t.by_tier.iter().enumerate() {
        let label = if i == 0 {
            "  by tier      "
        } else {
            "               "
        };
        // The cap in calls, as routing applies it: "max 10% → at most 1 of
        // 6 calls" says more than "17%, max 10%".
        let cap = match (tier.max_share_of_calls, tier.max_calls) {
            (Some(m), Some(n)) => format!("; max {:.0}% → at most {n} of {}", m * 100.0, t.calls),
            _ => String::new(),
        };
        // A tier only cascades reach (their escalations, their judges): no
        // routed calls, only money.
        if tier.calls == 0 && tier.cost.high > 0.0 {
            let _ = writeln!(
                o,
                "{label}{:<10}cascades only  {}",
                tier.tier.name(),
                range(tier.cost)
            );
            continue;
        }
        let _ = writeln!(
            o,
            "{label}{:<10}{} ({:.0}%{cap})  {}",
            tier.tier.name(),
            plural(tier.calls, "call"),
            tier.share_of_calls * 100.0,
            range(tier.cost)
        );
    }
    if let Some(f) = &t.flagship {
        let _ = writeln!(
            o,
            "  all-flagship {} on {} ({}): {} expected, {} worst case",
            plural(t.calls, "call"),
            f.model,
            f.provider_model,
            usd(f.cost.low),
            usd(f.cost.high)
        );
        if f.cost.low > 0.0 {
            let _ = writeln!(o, "  saving       {:.0}% vs all-flagship", f.saving_percent);
        }
    }
    if let Some(c) = &t.context {
        let pct = if c.tokens_before > 0 {
            format!(
                " ({:+.0}%)",
                (c.tokens_after as f64 / c.tokens_before as f64 - 1.0) * 100.0
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            o,
            "  context      {}: in {} → {} tokens{pct}, +{}; {}",
            plural(c.steps, "step"),
            c.tokens_before,
            c.tokens_after,
            plural(c.extra_calls, "call"),
            saved(c.saved_usd)
        );
    }
    if let Some(b) = &t.budget {
        if b.within {
            let _ = writeln!(
                o,
                "  budget       worst case {} is within run_usd {}",
                usd(b.worst_case_usd),
                usd(b.run_usd)
            );
        } else {
            let _ = writeln!(
                o,
                "  budget       worst case {} is OVER run_usd {}: a call that could cross it will not be made",
                usd(b.worst_case_usd),
                usd(b.run_usd)
            );
        }
    }
    let _ = writeln!(
        o,
        "  tokens       {}",
        if t.exact_token_counts {
            "all counts exact"
        } else {
            "≈ marks estimates (no public tokenizer, or upstream outputs not known yet)"
        }
    );
}

fn ms(v: u64) -> String {
    if v >= 10_000 {
        format!("{:.1}s", v as f64 / 1000.0)
    } else {
        format!("{v}ms")
    }
}

/// The summary of a run: a row per step, then the cost against the estimate,
/// savings, and what went wrong.
///
/// The truncated-answer warnings stay lines of this summary (not
/// diagnostics): they are facts of one step's answers, like the status
/// column, and `--format json` carries them as each call's `truncated`.
pub fn run_text(r: &RunReport) -> String {
    let mut o = String::new();
    let status = match r.status {
        RunStatus::Succeeded => "succeeded",
        RunStatus::Failed => "FAILED",
        RunStatus::Cancelled => "CANCELLED",
        RunStatus::TimedOut => "TIMED OUT",
    };
    let _ = writeln!(
        o,
        "Run of {} with policy {}: {status} in {}",
        r.workflow,
        r.policy,
        ms(r.elapsed_ms)
    );
    let rows: Vec<Vec<String>> = r.steps.iter().map(step_row).collect();
    o.push_str(&table(
        &[
            "STEP", "STATUS", "MODEL", "RULE", "IN", "OUT", "CACHED", "QUEUED", "LATENCY", "TTFT",
            "COST",
        ],
        &rows,
        4,
    ));
    let budget = r
        .budget_usd
        .map(|b| format!("; run budget {}", usd(b)))
        .unwrap_or_default();
    let _ = writeln!(
        o,
        "cost {} (plan estimate {} expected, {} worst case{budget})",
        usd(r.cost_usd),
        usd(r.estimate.low),
        usd(r.estimate.high)
    );
    time_split(&mut o, r);
    savings(&mut o, r);
    batch_fallbacks(&mut o, r);
    if let Some(id) = &r.run_id {
        if r.status == RunStatus::Succeeded {
            let _ = writeln!(o, "run {id}");
        } else {
            let _ = writeln!(o, "run {id} — finish it with: tollgate run --resume {id}");
        }
    }
    escalations(&mut o, r);
    for s in &r.steps {
        let cut = s.calls.tally().truncated;
        if cut > 0 {
            let _ = writeln!(
                o,
                "warning: {}: {cut} answer(s) stopped at max_output_tokens and may be cut short",
                s.id
            );
        }
        if matches!(s.status, StepStatus::Succeeded | StepStatus::Skipped) {
            continue;
        }
        if let Some(d) = &s.detail {
            let _ = writeln!(o, "{}: {}: {d}", s.id, s.status.name());
        }
    }
    o
}

/// The calls cascades escalated, with why (the first ten, then a count).
fn escalations(o: &mut String, r: &RunReport) {
    const SHOWN: usize = 10;
    const _: () = assert!(SHOWN <= crate::run::ESCALATIONS_KEPT);
    let all: usize = r.steps.iter().map(|s| s.calls.len()).sum();
    let first: u64 = r.steps.iter().map(|s| s.calls.tally().escalated).sum();
    let escalated: u64 = r.steps.iter().map(|s| s.calls.tally().escalations).sum();
    if first == 0 {
        return;
    }
    let _ = writeln!(
        o,
        "escalated {first} of {all} calls ({escalated} answered by the escalation target)"
    );
    let shown = r.steps.iter().flat_map(|s| {
        s.calls
            .escalations()
            .iter()
            .map(move |(i, e)| (&s.id, i, e))
    });
    for (id, item, e) in shown.take(SHOWN) {
        let item = item.map(|i| format!("[{i}]")).unwrap_or_default();
        let _ = writeln!(
            o,
            "  {id}{item}: {} → {} (rule {}): {}",
            e.from, e.to, e.rule, e.reason
        );
    }
    if escalated > SHOWN as u64 {
        let _ = writeln!(o, "  … and {} more", escalated - SHOWN as u64);
    }
}

/// One step's row of the run summary; `-` where the step made no call.
fn step_row(s: &crate::run::StepReport) -> Vec<String> {
    // Every call answered from one place.
    let all = |n: u64| !s.calls.is_empty() && n == s.calls.len() as u64;
    let status = if s.ignored_failure {
        "failed (ignored)".to_owned()
    } else if all(s.calls.tally().cache_hits) {
        format!("{} (cached)", s.status.name())
    } else if all(s.calls.tally().resumed) {
        format!("{} (resumed)", s.status.name())
    } else {
        s.status.name().to_owned()
    };
    let ran = !s.calls.is_empty();
    let if_ran = |v: String| if ran { v } else { "-".to_owned() };
    vec![
        s.id.clone(),
        status,
        s.model.clone().unwrap_or_else(|| "-".to_owned()),
        s.rule.clone().unwrap_or_else(|| "-".to_owned()),
        if_ran(s.usage.input_tokens.to_string()),
        if_ran(s.usage.output_tokens.to_string()),
        if_ran(s.usage.cached_input_tokens.to_string()),
        if_ran(ms(s.queued_ms)),
        if_ran(ms(s.call_ms)),
        s.ttft_ms.map_or_else(|| "-".to_owned(), ms),
        if_ran(usd(s.cost_usd)),
    ]
}

/// Where the calls' time went: waiting to be sent (slots, rate limits,
/// budget: the run's doing) against the models' own latency — so a slow
/// step reads as "queued behind a one-slot local server", not "slow model".
/// Only when a call was sent.
fn time_split(o: &mut String, r: &RunReport) {
    let tallies = || r.steps.iter().map(|s| s.calls.tally());
    if tallies().all(|t| t.sent == 0) {
        return;
    }
    let queued: u64 = tallies().map(|t| t.sent_queued_ms).sum();
    let in_calls: u64 = tallies().map(|t| t.sent_call_ms).sum();
    let _ = writeln!(
        o,
        "time: {} queued for slots, rate limits and budget, {} in the models' calls \
         (QUEUED and LATENCY, summed over a step's calls)",
        ms(queued),
        ms(in_calls)
    );
}

/// Calls a batch did not answer, answered one by one at full price: how
/// many, and what the batch discount would have saved on them.
fn batch_fallbacks(o: &mut String, r: &RunReport) {
    let fell: u64 = r
        .steps
        .iter()
        .map(|s| s.calls.tally().batch_fallbacks)
        .sum();
    if fell == 0 {
        return;
    }
    // In the calls' order: the sum's last digits depend on it.
    let lost: f64 = r
        .steps
        .iter()
        .flat_map(|s| s.calls.lost_discount_usd())
        .sum();
    let _ = writeln!(
        o,
        "batch: {} the batch did not answer went synchronously, at full price: {} more than at batch prices",
        plural(fell, "call"),
        usd(lost)
    );
}

/// The lines on what prompt caches, batches, the response cache and a
/// resume saved; none when nothing did.
fn savings(o: &mut String, r: &RunReport) {
    let batched: u64 = r.steps.iter().map(|s| s.calls.tally().batched).sum();
    let writes: u64 = r
        .steps
        .iter()
        .map(|s| s.calls.tally().provider_cache_write_tokens)
        .sum();
    if r.cached_input_tokens > 0 || writes > 0 || batched > 0 {
        let mut parts = Vec::new();
        if r.cached_input_tokens > 0 || writes > 0 {
            parts.push(format!(
                "{} input tokens read from prompt caches, {writes} written",
                r.cached_input_tokens
            ));
        }
        if batched > 0 {
            parts.push(format!("{batched} call(s) at batch prices"));
        }
        let verb = if r.saving_usd >= 0.0 { "saved" } else { "cost" };
        let _ = writeln!(
            o,
            "{}; {verb} {} vs list price {}",
            parts.join("; "),
            usd(r.saving_usd.abs()),
            usd(r.list_cost_usd)
        );
    }
    if r.cache.hits > 0 {
        let _ = writeln!(
            o,
            "cache: {} answered from the journal, {} saved",
            plural(r.cache.hits, "call"),
            usd(r.cache.saved_usd)
        );
    }
    if r.resumed_calls > 0 || r.earlier_cost_usd > 0.0 {
        let _ = writeln!(
            o,
            "resumed: {} finished before were not sent again ({} spent before this session)",
            plural(r.resumed_calls, "call"),
            usd(r.earlier_cost_usd)
        );
    }
}

/// Columns two spaces apart: the first `left` left-aligned, the rest
/// (numbers) right-aligned.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>], left: usize) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut o = String::new();
    let head: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&head).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i < left {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        let _ = writeln!(o, "{}", cells.join("  ").trim_end());
    }
    o
}

/// `tollgate runs`, with a column per `--by` split and each split's
/// groups after the list.
pub fn runs_text(runs: &[crate::journal::RunRow], by: &[crate::journal::report::By]) -> String {
    if runs.is_empty() {
        return "no runs journaled yet\n".to_owned();
    }
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            let mut row = vec![r.id.clone(), r.started.clone(), r.workflow.clone()];
            row.extend(by.iter().map(|b| b.key(r)));
            row.extend([
                r.status.clone(),
                format!("{}/{}", r.steps_done, r.steps_total),
                usd(r.cost_usd),
            ]);
            row
        })
        .collect();
    let mut header: Vec<String> = ["RUN", "STARTED (UTC)", "WORKFLOW"]
        .map(str::to_owned)
        .to_vec();
    header.extend(by.iter().map(|b| b.name().to_uppercase()));
    header.extend(["STATUS", "STEPS", "COST"].map(str::to_owned));
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut o = table(&header, &rows, 4 + by.len());
    for &b in by {
        let groups = crate::journal::report::runs_by(runs, b);
        let rows: Vec<Vec<String>> = groups
            .iter()
            .map(|g| {
                vec![
                    g.key.clone(),
                    g.runs.to_string(),
                    g.succeeded.to_string(),
                    g.other.to_string(),
                    usd(g.cost_usd),
                ]
            })
            .collect();
        let _ = writeln!(o, "\nBy {} (the runs listed)", b.name());
        let name = b.name().to_uppercase();
        o.push_str(&table(
            &[name.as_str(), "RUNS", "SUCCEEDED", "OTHER", "COST"],
            &rows,
            1,
        ));
    }
    o
}

/// `tollgate report`.
pub fn report_text(r: &crate::journal::report::Report) -> String {
    use crate::journal::report::Line;
    let mut o = String::new();
    let since = r
        .since
        .as_ref()
        .map_or_else(|| "all time".to_owned(), |s| format!("since {s} UTC"));
    let t = &r.totals;
    let _ = writeln!(
        o,
        "Spend, {since}: {} in {} ({} provider calls, {} answered from the cache)",
        usd(t.cost_usd),
        plural(r.runs, "run"),
        t.calls,
        t.cache_hits
    );
    let _ = writeln!(
        o,
        "  estimated   {} (the plans' expected cost)",
        usd(t.estimate_usd.unwrap_or(0.0))
    );
    let _ = writeln!(
        o,
        "  on flagship {} (the same calls, all on the flagship)",
        usd(t.flagship_usd)
    );
    let _ = writeln!(
        o,
        "  saved       {} by routing, {} by the response cache, {} by prompt caching, {} by batching",
        usd(t.savings.routing_usd),
        usd(t.savings.cache_usd),
        usd(t.savings.prompt_cache_usd),
        usd(t.savings.batch_usd)
    );
    if t.savings.context_tokens != 0 || t.savings.context_usd != 0.0 {
        let _ = writeln!(
            o,
            "  saved       {} by context management ({} input tokens not sent; as planned)",
            usd(t.savings.context_usd),
            t.savings.context_tokens
        );
    }
    if t.untrusted_calls > 0 {
        let _ = writeln!(
            o,
            "  warning: {} reported usage or a cost that was not believed (absurd counts, a negative or huge cost); \
             they are charged what tollgate judged, not what the server said (`usage_flag` in the journal)",
            plural(t.untrusted_calls, "call")
        );
    }
    if t.above_reserve_calls > 0 {
        let _ = writeln!(
            o,
            "  note: {} cost more than the worst case reserved for them (the provider counted or priced higher)",
            plural(t.above_reserve_calls, "call")
        );
    }
    let section = |o: &mut String, title: &str, lines: &[Line], estimates: bool| {
        if lines.is_empty() {
            return;
        }
        let _ = writeln!(o, "\n{title}");
        let mut header = vec![title.trim_start_matches("By ").to_uppercase()];
        header.extend(["CALLS", "CACHED", "IN", "OUT", "COST"].map(str::to_owned));
        if estimates {
            header.push("ESTIMATE".to_owned());
        }
        header.extend(
            [
                "FLAGSHIP",
                "SAVED ROUTING",
                "SAVED CACHE",
                "SAVED PROMPT CACHE",
                "SAVED BATCH",
            ]
            .map(str::to_owned),
        );
        let rows: Vec<Vec<String>> = lines
            .iter()
            .map(|l| {
                let mut row = vec![
                    l.key.clone(),
                    l.calls.to_string(),
                    l.cache_hits.to_string(),
                    l.input_tokens.to_string(),
                    l.output_tokens.to_string(),
                    usd(l.cost_usd),
                ];
                if estimates {
                    row.push(l.estimate_usd.map_or_else(|| "-".to_owned(), usd));
                }
                row.extend([
                    usd(l.flagship_usd),
                    usd(l.savings.routing_usd),
                    usd(l.savings.cache_usd),
                    usd(l.savings.prompt_cache_usd),
                    usd(l.savings.batch_usd),
                ]);
                row
            })
            .collect();
        let header: Vec<&str> = header.iter().map(String::as_str).collect();
        o.push_str(&table(&header, &rows, 1));
    };
    section(&mut o, "By day", &r.by_day, false);
    section(&mut o, "By workflow", &r.by_workflow, true);
    section(&mut o, "By step", &r.by_step, true);
    section(&mut o, "By model", &r.by_model, false);
    section(&mut o, "By tier", &r.by_tier, false);
    // Pools only: which of a pool's servers answered (`provider endpoint`).
    section(&mut o, "By endpoint", &r.by_endpoint, false);
    for (title, lines) in [
        ("By user", &r.by_user),
        ("By machine", &r.by_machine),
        ("By ci", &r.by_ci),
    ] {
        if let Some(lines) = lines {
            section(&mut o, title, lines, false);
        }
    }
    if !r.cascades.is_empty() {
        let _ = writeln!(o, "\nCascades");
        let rows: Vec<Vec<String>> = r
            .cascades
            .iter()
            .map(|c| {
                vec![
                    c.key.clone(),
                    c.first_answers.to_string(),
                    c.escalated.to_string(),
                    format!("{:.0}%", c.escalation_rate * 100.0),
                    usd(c.first_cost_usd),
                    usd(c.escalated_cost_usd),
                    c.all_on_target_usd
                        .map_or_else(|| "-".to_owned(), |a| format!("≈{}", usd(a))),
                    c.saved_usd
                        .map_or_else(|| "-".to_owned(), |a| format!("≈{}", usd(a))),
                ]
            })
            .collect();
        o.push_str(&table(
            &[
                "RULE",
                "FIRST ANSWERS",
                "ESCALATED",
                "RATE",
                "FIRST COST",
                "ESCALATED COST",
                "ALL ON TARGET",
                "SAVED",
            ],
            &rows,
            1,
        ));
        let _ = writeln!(
            o,
            "(all on target: every first answer at the average cost of an escalated call)"
        );
    }
    o
}

/// The budgets-over-time lines `plan` adds (from `budgets_left` JSON).
pub fn budgets_left_text(left: &serde_json::Value, worst_case: f64) -> String {
    let mut o = String::new();
    for (key, what) in [("daily", "today (UTC)"), ("monthly", "this month (UTC)")] {
        let v = &left[key];
        let Some(limit) = v["limit_usd"].as_f64() else {
            continue;
        };
        match v["left_usd"].as_f64() {
            Some(l) => {
                let verdict = if worst_case <= l {
                    "fits"
                } else {
                    "does NOT fit"
                };
                let _ = writeln!(
                    o,
                    "{key} budget: {} left of {} {what}; this run's worst case {} {verdict}",
                    usd(l),
                    usd(limit),
                    usd(worst_case)
                );
            }
            None => {
                let _ = writeln!(
                    o,
                    "{key} budget: {}: cannot read the journal ({}); paid calls would not be made",
                    usd(limit),
                    v["error"].as_str().unwrap_or("unknown error")
                );
            }
        }
    }
    o
}

/// Renders `plan --compare` as text: one row per step (baseline route →
/// proposal route, expected cost and its change), then the totals.
pub fn plan_diff_text(d: &crate::plan::compare::PlanDiff) -> String {
    use crate::plan::compare::RouteBrief;
    let route = |r: &Option<RouteBrief>| match r {
        Some(r) => format!(
            "{} ({}, {})",
            r.model,
            r.provider_model,
            match r.locality {
                Locality::Local => "local",
                Locality::Cloud => "cloud",
            }
        ),
        None => "no route".to_owned(),
    };
    let mut o = String::new();
    let _ = writeln!(
        o,
        "Policy change for workflow {} ({})",
        d.workflow.name, d.workflow.path
    );
    let _ = writeln!(o, "  baseline  {} ({})", d.baseline.name, d.baseline.path);
    let _ = writeln!(o, "  proposal  {} ({})", d.policy.name, d.policy.path);
    o.push('\n');
    let rows: Vec<[String; 5]> = d
        .steps
        .iter()
        .map(|s| {
            let mark = if s.leaves_machine {
                " ← leaves the machine"
            } else if s.changed {
                " ← changed"
            } else {
                ""
            };
            [
                s.id.clone(),
                route(&s.baseline_route),
                format!("{}{mark}", route(&s.route)),
                format!("{} → {}", usd(s.baseline_cost.low), usd(s.cost.low)),
                signed_usd(s.delta),
            ]
        })
        .collect();
    let header = ["step", "baseline", "proposal", "expected cost", "change"].map(str::to_owned);
    let mut widths = header.clone().map(|h| h.chars().count());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    for r in std::iter::once(&header).chain(&rows) {
        let mut line = String::from("  ");
        for (i, (c, w)) in r.iter().zip(widths).enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                line.push_str(c);
                line.push_str(&" ".repeat(w - c.chars().count() + 2));
            }
        }
        let _ = writeln!(o, "{}", line.trim_end());
    }
    let t = &d.totals;
    o.push('\n');
    let percent = t
        .delta_percent
        .map(|p| format!(" ({p:+.0}%)"))
        .unwrap_or_default();
    let _ = writeln!(
        o,
        "  total expected   {} → {}: {}{percent}",
        usd(t.baseline_cost.low),
        usd(t.cost.low),
        signed_usd(t.delta)
    );
    let _ = writeln!(
        o,
        "  total worst case {} → {}",
        usd(t.baseline_cost.high),
        usd(t.cost.high)
    );
    let _ = writeln!(
        o,
        "  cloud calls      {} → {}",
        t.baseline_cloud_calls, t.cloud_calls
    );
    let _ = writeln!(
        o,
        "  routes changed   {} of {}",
        t.changed_steps,
        plural(d.steps.len() as u64, "step")
    );
    o
}

/// A change in dollars with its sign (`+$0.0012`, `-$0.50`, `$0`).
fn signed_usd(x: f64) -> String {
    if x.abs() < 1e-12 {
        "$0".to_owned()
    } else if x > 0.0 {
        format!("+{}", usd(x))
    } else {
        usd(x)
    }
}

/// Why `plan --compare --fail-on …` refuses a change, as one line.
pub fn violation_text(v: &crate::plan::compare::Violation) -> String {
    use crate::plan::compare::Violation;
    match v {
        Violation::MoreCost { baseline, proposal } => format!(
            "more-cost: the expected total rises from {} to {} ({})",
            usd(*baseline),
            usd(*proposal),
            signed_usd(proposal - baseline)
        ),
        Violation::LeavesMachine { step } => {
            format!("more-cloud: step `{step}` would leave the machine")
        }
        Violation::MoreCloudCalls { baseline, proposal } => {
            format!("more-cloud: {proposal} cloud calls instead of {baseline}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::usd;

    /// Under a cent, two significant digits whatever the size; never a
    /// positive amount shown as zero.
    #[test]
    fn money_under_a_cent_keeps_two_significant_digits() {
        assert_eq!(usd(0.0), "$0");
        assert_eq!(usd(12.345), "$12.35");
        assert_eq!(usd(0.0123), "$0.0123");
        assert_eq!(usd(0.000123), "$0.000123");
        assert_eq!(usd(0.00012), "$0.000120");
        assert_eq!(usd(0.0000012), "$0.0000012");
        assert_eq!(usd(0.000001), "$0.000001");
        assert_eq!(usd(0.00000034), "$0.00000034");
        assert_eq!(usd(0.0000000042), "$0.0000000042");
        assert_eq!(usd(1e-13), "<$0.0000000001");
        assert_eq!(usd(-0.0000012), "-$0.0000012");
    }
}
