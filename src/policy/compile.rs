//! Compiling a policy file into a [`Policy`], one function per section:
//! the sensitivity ladder, providers (and their managed servers, in
//! `providers`), models (priced, in `models`), rules (as sets and ranges,
//! with the rules that can never match), fallbacks, the flagship, budgets
//! and the cache.
//!
//! Every section is compiled even when an earlier one had errors, so every
//! problem is reported at once; the policy returned alongside errors is
//! partial and only good for more checks.

use std::collections::{BTreeMap, BTreeSet};

use super::models::models;
use super::providers::{check_ports, providers};
use super::{
    Conditions, DEFAULT_CACHE_TTL, OneOrMany, Policy, PolicyFile, PolicyRouter, RouterCondition,
    RouterConditionFile, RouterThreshold, Rule, RuleFile, SensitivityCondition, Tier,
};
use crate::catalog::Catalog;
use crate::diagnostic::{Diagnostic, Span, did_you_mean, one_of};
use crate::workflow::{KNOWN_TASKS, unknown_task};
use crate::yaml::{Document, pointer};

/// The default ladder when a policy says nothing about sensitivity.
const DEFAULT_LEVELS: [&str; 4] = ["public", "internal", "confidential", "secret"];
const DEFAULT_CLOUD_MAX: &str = "internal";

/// Compiles a policy; returns the policy (possibly partial) and every
/// problem, warnings included (also kept in [`Policy::warnings`]).
pub fn compile(file: &PolicyFile, doc: &Document, catalog: &Catalog) -> (Policy, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let ladder = ladder(file, doc, &mut diags);
    let providers = providers(file, doc, &mut diags);
    check_ports(file, &providers, doc, &mut diags);
    let models = models(file, doc, catalog, &providers, &mut diags);
    let names = ModelNames { file, doc };
    let mut routers = Vec::new();
    let mut rules = rules(file, doc, &ladder.levels, &names, &mut routers, &mut diags);
    super::escalate::escalations(file, doc, &models, ladder.cloud_max, &mut rules, &mut diags);
    check_rule_tasks(file, doc, &mut diags);
    let tasks = file
        .tasks
        .iter()
        .cloned()
        .chain(
            rules
                .iter()
                .filter_map(|r| r.conditions.task.as_ref())
                .flatten()
                .cloned(),
        )
        .collect();
    check_fallbacks(file, doc, &names, &mut diags);
    let flagship = match &file.flagship {
        Some(f) => {
            names.check(f, &["flagship"], &mut diags);
            Some(f.clone())
        }
        None => file
            .models
            .iter()
            .find(|(_, m)| m.tier == Tier::Flagship)
            .map(|(k, _)| k.clone()),
    };
    check_budgets(file, doc, &mut diags);
    let cache_ttl = cache_ttl(file, doc, &mut diags);
    let tier_shares = file
        .budgets
        .tiers
        .iter()
        .map(|(t, b)| (*t, b.max_share_of_calls))
        .collect();
    let mut warnings: Vec<Diagnostic> = diags.iter().filter(|d| !d.is_error()).cloned().collect();
    crate::diagnostic::sort(&mut warnings);
    let policy = Policy {
        routers,
        name: file.name.clone().unwrap_or_else(|| {
            doc.file
                .path
                .file_stem()
                .map_or_else(|| "policy".to_owned(), |s| s.to_string_lossy().into_owned())
        }),
        levels: ladder.levels,
        cloud_max: ladder.cloud_max,
        default_level: ladder.default_level,
        providers,
        models,
        rules,
        fallbacks: file.fallbacks.clone(),
        flagship,
        run_budget_usd: file.budgets.run_usd,
        daily_budget_usd: file.budgets.daily_usd,
        monthly_budget_usd: file.budgets.monthly_usd,
        per_user_daily_budget_usd: file.budgets.per_user_daily_usd,
        tier_shares,
        tasks,
        cache_ttl,
        warnings,
    };
    (policy, diags)
}

/// The sensitivity ladder: levels least sensitive first, and the indices of
/// `cloud_max` and `default`.
struct Ladder {
    levels: Vec<String>,
    cloud_max: usize,
    default_level: usize,
}

fn ladder(file: &PolicyFile, doc: &Document, diags: &mut Vec<Diagnostic>) -> Ladder {
    let Some(s) = &file.sensitivity else {
        return Ladder {
            levels: DEFAULT_LEVELS.iter().map(|s| (*s).to_owned()).collect(),
            cloud_max: DEFAULT_LEVELS
                .iter()
                .position(|l| *l == DEFAULT_CLOUD_MAX)
                .unwrap_or(0),
            default_level: 0,
        };
    };
    let mut find = |name: &str, key: &str| -> usize {
        s.levels.iter().position(|l| l == name).unwrap_or_else(|| {
            diags.push(
                Diagnostic::error(
                    "unknown-level",
                    format!("unknown sensitivity level `{name}`"),
                )
                .at(doc.span(&pointer(["sensitivity", key])))
                .with_label("not in `sensitivity.levels`")
                .with_help(level_help(&s.levels, name)),
            );
            0
        })
    };
    let cloud_max = find(&s.cloud_max, "cloud_max");
    let default_level = s.default.as_deref().map_or(0, |d| find(d, "default"));
    Ladder {
        levels: s.levels.clone(),
        cloud_max,
        default_level,
    }
}

fn level_help(levels: &[String], name: &str) -> String {
    did_you_mean(name, levels.iter().map(String::as_str))
        .unwrap_or_else(|| format!("levels are {}", one_of(levels.iter().map(String::as_str))))
}

/// Checks that names written in the policy are models it defines.
struct ModelNames<'a> {
    file: &'a PolicyFile,
    doc: &'a Document,
}

impl ModelNames<'_> {
    fn help(&self, name: &str) -> String {
        let names = || self.file.models.keys().map(String::as_str);
        did_you_mean(name, names())
            .unwrap_or_else(|| format!("defined models: {}", one_of(names())))
    }

    /// Reports `name`, written at `segs`, unless it is a defined model.
    fn check(&self, name: &str, segs: &[&str], diags: &mut Vec<Diagnostic>) {
        if !self.file.models.contains_key(name) {
            diags.push(
                Diagnostic::error("unknown-model", format!("unknown model `{name}`"))
                    .at(self.doc.span(&pointer(segs)))
                    .with_label("not defined under `models`")
                    .with_help(self.help(name)),
            );
        }
    }
}

/// The rules, in order: names unique, models defined, conditions as sets
/// and ranges; a rule that can never match (empty conditions, or covered by
/// an earlier rule) is an error.
fn rules(
    file: &PolicyFile,
    doc: &Document,
    levels: &[String],
    names: &ModelNames<'_>,
    routers: &mut Vec<PolicyRouter>,
    diags: &mut Vec<Diagnostic>,
) -> Vec<Rule> {
    let mut rules: Vec<Rule> = Vec::new();
    let mut seen_names: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, r) in file.rules.iter().enumerate() {
        let idx = i.to_string();
        let rp = |rest: &[&str]| {
            let mut segs = vec!["rules", idx.as_str()];
            segs.extend_from_slice(rest);
            pointer(segs)
        };
        if let Some(first) = seen_names.insert(&r.name, i) {
            diags.push(
                Diagnostic::error("duplicate-rule", format!("two rules are named `{}`", r.name))
                    .at(doc.span(&rp(&["name"])))
                    .with_help(format!("rule #{} has the same name; plans name the rule that decided, so names must be unique", first + 1)),
            );
        }
        names.check(&r.use_model, &["rules", &idx, "use"], diags);
        let mut conditions = conditions(
            r,
            levels,
            |key| doc.span(&rp(&["when", "sensitivity", key])),
            diags,
        );
        if let Some(rc) = &r.when.router {
            conditions.router = router_condition(rc, doc, &rp(&["when", "router"]), routers, diags);
        }
        if let Some(why) = conditions.is_empty() {
            diags.push(
                Diagnostic::error(
                    "rule-never-matches",
                    format!("rule `{}` can never match: {why}", r.name),
                )
                .at(doc.span(&rp(&["when"])))
                .with_help("fix or remove the condition"),
            );
        } else if let Some(earlier) = rules.iter().find(|e| e.conditions.covers(&conditions)) {
            diags.push(shadowed(r, earlier, doc.span(&rp(&["name"]))));
        }
        rules.push(Rule {
            name: r.name.clone(),
            description: r.description.clone(),
            conditions,
            use_model: r.use_model.clone(),
            escalate: None,
        });
    }
    rules
}

/// A rule's `router:` condition: its file gets a slot in the policy's
/// routers (one per file, read by `policy::load`), its threshold a kind.
fn router_condition(
    rc: &RouterConditionFile,
    doc: &Document,
    ptr: &str,
    routers: &mut Vec<PolicyRouter>,
    diags: &mut Vec<Diagnostic>,
) -> Option<RouterCondition> {
    let threshold = match (rc.threshold, rc.target_strong_share) {
        (Some(_), Some(_)) => {
            diags.push(
                Diagnostic::error(
                    "router-threshold",
                    "a router condition takes `threshold` or `target_strong_share`, not both",
                )
                .at(doc.span(ptr))
                .with_help("keep one: a fixed score threshold, or the share of prompts the router sends to this rule"),
            );
            return None;
        }
        (Some(t), None) => RouterThreshold::Fixed(t),
        (None, Some(s)) => RouterThreshold::TargetShare(s),
        (None, None) => RouterThreshold::Calibrated,
    };
    let slot = match routers.iter().position(|r| r.file == rc.file) {
        Some(i) => i,
        None => {
            let base = doc.file.path.parent().unwrap_or(std::path::Path::new(""));
            routers.push(PolicyRouter {
                file: rc.file.clone(),
                path: base.join(&rc.file),
                at: doc.span(&format!("{ptr}/file")),
                router: None,
            });
            routers.len() - 1
        }
    };
    Some(RouterCondition { slot, threshold })
}

/// A rule's `when` as sets and ranges. `level_at(key)` is where the
/// sensitivity condition `key` is written ("" for a list of levels).
fn conditions(
    r: &RuleFile,
    levels: &[String],
    level_at: impl Fn(&str) -> Option<Span>,
    diags: &mut Vec<Diagnostic>,
) -> Conditions {
    let c = &r.when;
    let mut level = |name: &str, key: &str| -> Option<usize> {
        let found = levels.iter().position(|l| l == name);
        if found.is_none() {
            diags.push(
                Diagnostic::error(
                    "unknown-level",
                    format!("unknown sensitivity level `{name}`"),
                )
                .at(level_at(key))
                .with_help(level_help(levels, name)),
            );
        }
        found
    };
    let sensitivity = match &c.sensitivity {
        None => None,
        Some(SensitivityCondition::Levels(names)) => Some(
            names
                .to_vec()
                .iter()
                .filter_map(|n| level(n, ""))
                .collect::<BTreeSet<_>>(),
        ),
        Some(SensitivityCondition::Bounds(b)) => {
            let mut set: BTreeSet<usize> = (0..levels.len()).collect();
            if let Some(l) = b.above.as_deref().and_then(|n| level(n, "above")) {
                set.retain(|&x| x > l);
            }
            if let Some(l) = b.at_least.as_deref().and_then(|n| level(n, "at_least")) {
                set.retain(|&x| x >= l);
            }
            if let Some(l) = b.below.as_deref().and_then(|n| level(n, "below")) {
                set.retain(|&x| x < l);
            }
            if let Some(l) = b.at_most.as_deref().and_then(|n| level(n, "at_most")) {
                set.retain(|&x| x <= l);
            }
            Some(set)
        }
    };
    let input_tokens = c.input_tokens.as_ref().map(|t| {
        let lo =
            t.gt.map_or(0, |v| v.saturating_add(1))
                .max(t.gte.unwrap_or(0));
        let hi =
            t.lt.map_or(u64::MAX, |v| v.saturating_sub(1))
                .min(t.lte.unwrap_or(u64::MAX));
        // `lt: 0` admits nothing: mark the range empty.
        if t.lt == Some(0) { (1, 0) } else { (lo, hi) }
    });
    Conditions {
        router: None,
        task: c.task.as_ref().map(|t| t.to_vec().into_iter().collect()),
        sensitivity,
        input_tokens,
        reasoning: c
            .reasoning
            .as_ref()
            .map(|t| t.to_vec().into_iter().collect()),
        latency: c.latency.as_ref().map(|t| t.to_vec().into_iter().collect()),
        tags: c.tags.as_ref().map(|t| t.to_vec().into_iter().collect()),
    }
}

/// A rule's `when: { task: … }` names a known task or one the policy
/// declares in `tasks:`: a typo would make the rule never match, silently.
fn check_rule_tasks(file: &PolicyFile, doc: &Document, diags: &mut Vec<Diagnostic>) {
    let declared = || file.tasks.iter().map(String::as_str);
    for (i, r) in file.rules.iter().enumerate() {
        let Some(tasks) = r.when.task.as_ref() else {
            continue;
        };
        let listed = matches!(tasks, OneOrMany::Many(_));
        for (j, task) in tasks.to_vec().iter().enumerate() {
            if KNOWN_TASKS.contains(&task.as_str()) || declared().any(|d| d == task) {
                continue;
            }
            let idx = i.to_string();
            let jdx = j.to_string();
            let mut at = vec!["rules", idx.as_str(), "when", "task"];
            if listed {
                at.push(jdx.as_str());
            }
            diags.push(
                unknown_task(
                    task,
                    KNOWN_TASKS.iter().copied().chain(declared()),
                    "the policy",
                )
                .at(doc.span(&pointer(at))),
            );
        }
    }
}

/// The error for a rule every step of which an earlier rule takes first.
fn shadowed(r: &RuleFile, earlier: &Rule, at: Option<Span>) -> Diagnostic {
    Diagnostic::error(
        "rule-never-matches",
        format!("rule `{}` can never match", r.name),
    )
    .at(at)
    .with_label(format!(
        "every step it matches is taken first by rule `{}`",
        earlier.name
    ))
    .with_help(if earlier.conditions.is_catch_all() {
        format!(
            "rule `{}` has no conditions and matches everything: move it to the end",
            earlier.name
        )
    } else {
        format!(
            "move it above rule `{}`, or narrow `{}`",
            earlier.name, earlier.name
        )
    })
}

/// Fallback chains: from and to defined models, never to itself.
fn check_fallbacks(
    file: &PolicyFile,
    doc: &Document,
    names: &ModelNames<'_>,
    diags: &mut Vec<Diagnostic>,
) {
    for (from, chain) in &file.fallbacks {
        if !file.models.contains_key(from) {
            diags.push(
                Diagnostic::error(
                    "unknown-model",
                    format!("fallbacks for unknown model `{from}`"),
                )
                .at(doc.key_span(&pointer(["fallbacks", from.as_str()])))
                .with_help(names.help(from)),
            );
        }
        for (j, to) in chain.iter().enumerate() {
            let j = j.to_string();
            if to == from {
                diags.push(
                    Diagnostic::error(
                        "fallback-to-self",
                        format!("model `{from}` falls back to itself"),
                    )
                    .at(doc.span(&pointer(["fallbacks", from, &j])))
                    .with_help("remove it from its own fallback list"),
                );
            } else {
                names.check(to, &["fallbacks", from, &j], diags);
            }
        }
    }
}

/// Budgets over time: the schema rejects negative numbers; what is left
/// are combinations that cannot all hold.
fn check_budgets(file: &PolicyFile, doc: &Document, diags: &mut Vec<Diagnostic>) {
    let at = |segs: &[&str]| doc.span(&pointer(segs));
    let b = &file.budgets;
    if let (Some(d), Some(m)) = (b.daily_usd, b.monthly_usd) {
        if d > m {
            diags.push(
                Diagnostic::error(
                    "budget-order",
                    format!("the daily budget (${d}) is larger than the monthly budget (${m})"),
                )
                .at(at(&["budgets", "daily_usd"]))
                .with_help("a day's spend counts against the month too: lower daily_usd or raise monthly_usd"),
            );
        }
    }
    // One user's day is part of the team's day and month.
    for (key, limit) in [("daily_usd", b.daily_usd), ("monthly_usd", b.monthly_usd)] {
        if let (Some(user), Some(limit)) = (b.per_user_daily_usd, limit) {
            if user > limit {
                diags.push(
                    Diagnostic::error(
                        "budget-order",
                        format!(
                            "the per-user daily budget (${user}) is larger than `{key}` (${limit})"
                        ),
                    )
                    .at(at(&["budgets", "per_user_daily_usd"]))
                    .with_help(format!(
                        "a user's spend counts against `{key}` too: lower per_user_daily_usd"
                    )),
                );
            }
        }
    }
    for (key, limit) in [
        ("daily_usd", b.daily_usd),
        ("monthly_usd", b.monthly_usd),
        ("per_user_daily_usd", b.per_user_daily_usd),
    ] {
        if let (Some(run), Some(limit)) = (b.run_usd, limit) {
            if run > limit {
                diags.push(
                    Diagnostic::error(
                        "budget-order",
                        format!("the run budget (${run}) is larger than `{key}` (${limit})"),
                    )
                    .at(at(&["budgets", "run_usd"]))
                    .with_help(format!(
                        "one run can never spend more than `{key}` allows: lower run_usd"
                    )),
                );
            }
        }
    }
}

/// How old a cached answer may be ([`DEFAULT_CACHE_TTL`] when not set).
fn cache_ttl(
    file: &PolicyFile,
    doc: &Document,
    diags: &mut Vec<Diagnostic>,
) -> std::time::Duration {
    let Some(v) = &file.cache.ttl else {
        return DEFAULT_CACHE_TTL;
    };
    crate::workflow::parse_duration(v).unwrap_or_else(|| {
        diags.push(
            Diagnostic::error("bad-duration", format!("cache ttl {v} is not a duration"))
                .at(doc.span(&pointer(["cache", "ttl"])))
                .with_help("use a number with a unit: 30m, 12h, 7d; 0 turns the cache off"),
        );
        DEFAULT_CACHE_TTL
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostic::SourceFile;
    use crate::policy::providers::host_port;
    use crate::policy::{CacheTtl, Locality, is_loopback};
    use crate::schema::Format;
    use crate::workflow::{Loaded, from_document};

    fn compile_text(text: &str) -> (Policy, Vec<Diagnostic>) {
        let doc = Document::parse(SourceFile::new("p.yaml", text)).unwrap();
        let loaded: Loaded<PolicyFile> = from_document(doc, Format::Policy).unwrap();
        compile(&loaded.value, &loaded.doc, Catalog::builtin())
    }

    const BASE: &str = "version: 1\nproviders:\n  ollama: {kind: openai-compatible, base_url: \"http://127.0.0.1:11434/v1\"}\n  openai: {kind: openai}\nmodels:\n  local: {provider: ollama, model: \"qwen3:8b\", tier: local, context_window: 32768}\n  budget: {provider: openai, model: gpt-4o-mini, tier: budget}\n";

    #[test]
    fn loopback_openai_compatible_is_local() {
        let (p, d) = compile_text(&format!("{BASE}rules:\n  - {{name: all, use: local}}\n"));
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(p.models["local"].locality, Locality::Local);
        assert!(p.models["local"].price.is_free());
        assert_eq!(p.models["budget"].locality, Locality::Cloud);
        assert!(p.models["budget"].price.input > 0.0);
        assert!(is_loopback("http://[::1]:8080/v1"));
        assert!(!is_loopback("https://api.example.com/v1"));
    }

    #[test]
    fn loopback_is_the_host_connected_to_not_what_the_url_seems_to_say() {
        for local in [
            "http://127.0.0.1:8080/v1",
            "http://127.9.9.9/v1",
            "http://[::1]:8080/v1",
            "http://localhost:11434/v1",
            "http://LOCALHOST:11434/v1",
            // WHATWG IPv4 forms reqwest normalises to 127.0.0.1.
            "http://0x7f.1:8080/v1",
            "http://2130706433:8080/v1",
            "http://127.1:8080/v1",
            "http://0177.0.0.1/v1",
            "http://[::ffff:127.0.0.1]:8080/v1",
            // Userinfo that names a remote host does not make it remote.
            "http://example.com@127.0.0.1:8080/v1",
        ] {
            assert!(is_loopback(local), "{local}");
        }
        for remote in [
            // Userinfo is not the host.
            "http://[::1]@example.com/v1",
            "http://127.0.0.1:1@example.com/v1",
            "http://127.0.0.1:8080@example.com:8080/v1",
            "http://localhost@example.com/v1",
            // Names that resolve through DNS.
            "http://localhost./v1",
            "http://localhost.example.com/v1",
            "http://foo.localhost/v1",
            "http://127.0.0.1.nip.io/v1",
            "http://0.0.0.0:8080/v1",
            "https://api.example.com/v1",
            "not a url",
            "http://127.0.0.1 .example.com/v1",
        ] {
            assert!(!is_loopback(remote), "{remote}");
        }
        // A userinfo trick does not make an openai-compatible server local,
        // nor let `launch` start a server for it.
        let (p, d) = compile_text(
            "version: 1\nproviders:\n  tricked: {kind: openai-compatible, base_url: \"http://127.0.0.1:1@example.com:8080/v1\"}\nmodels:\n  m: {provider: tricked, model: x, tier: local, pricing: {input_per_mtok: 0, output_per_mtok: 0}}\nrules:\n  - {name: all, use: m}\n",
        );
        assert_eq!(p.providers["tricked"].locality, Locality::Cloud, "{d:?}");
        assert!(p.providers["tricked"].insecure);
        assert_eq!(
            host_port("http://[::1]:8080/v1"),
            Some(("::1".to_owned(), 8080))
        );
        assert_eq!(
            host_port("http://x@127.0.0.1:8080/v1"),
            Some(("127.0.0.1".to_owned(), 8080))
        );
    }

    #[test]
    fn prompt_cache_minimums_come_from_the_policy_the_catalog_or_the_family() {
        let (p, d) = compile_text(
            "version: 1\nproviders:\n  anthropic: {kind: anthropic, prompt_cache: {ttl: 1h}}\nmodels:\n  \
             sonnet: {provider: anthropic, model: claude-sonnet-4-6, tier: workhorse}\n  \
             haiku: {provider: anthropic, model: claude-haiku-4-5, tier: budget, prompt_cache: {min_tokens: 3000}}\n  \
             custom-haiku: {provider: anthropic, model: my-haiku-x, tier: budget, context_window: 100000, \
             pricing: {input_per_mtok: 1, output_per_mtok: 5}}\n  \
             custom: {provider: anthropic, model: my-model, tier: budget, context_window: 100000, \
             pricing: {input_per_mtok: 1, output_per_mtok: 5, cache_write_1h_per_mtok: 2}}\n\
             rules:\n  - {name: all, use: sonnet}\n",
        );
        assert!(d.is_empty(), "{d:?}");
        let m = |a: &str| {
            (
                p.models[a].prompt_cache,
                p.models[a].prompt_cache_min_tokens,
            )
        };
        // The catalog's minimum, the provider's TTL.
        assert_eq!(m("sonnet"), (Some(CacheTtl::OneHour), 1024));
        // The model's own block replaces the provider's: its TTL defaults to 5m.
        assert_eq!(m("haiku"), (Some(CacheTtl::FiveMinutes), 3000));
        // Not in the catalog: the family's documented minimum.
        assert_eq!(m("custom-haiku"), (Some(CacheTtl::OneHour), 2048));
        assert_eq!(m("custom"), (Some(CacheTtl::OneHour), 1024));
        assert_eq!(p.models["custom"].price.cache_write_1h, Some(2e-6));
    }

    #[test]
    fn shadowed_rule_is_reported() {
        let (_, d) = compile_text(&format!(
            "{BASE}rules:\n  - {{name: all, use: local}}\n  - {{name: late, when: {{task: debug}}, use: budget}}\n"
        ));
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].message, "rule `late` can never match");
    }

    #[test]
    fn empty_conditions_are_reported() {
        let (_, d) = compile_text(&format!(
            "{BASE}rules:\n  - {{name: r, when: {{sensitivity: {{above: secret}}}}, use: local}}\n  - {{name: z, when: {{input_tokens: {{gt: 10, lt: 5}}}}, use: local}}\n"
        ));
        assert_eq!(d.len(), 2, "{d:?}");
    }

    #[test]
    fn unknown_names_have_hints() {
        let (_, d) = compile_text(&format!(
            "{BASE}rules:\n  - {{name: all, use: locl}}\nfallbacks:\n  local: [budgt]\n"
        ));
        let msgs: Vec<_> = d
            .iter()
            .map(|d| (d.message.as_str(), d.help.as_deref()))
            .collect();
        assert!(
            msgs.contains(&("unknown model `locl`", Some("did you mean `local`?"))),
            "{msgs:?}"
        );
        assert!(
            msgs.contains(&("unknown model `budgt`", Some("did you mean `budget`?"))),
            "{msgs:?}"
        );
    }

    #[test]
    fn escalations_are_checked_with_located_hints() {
        let anthropic = "  anthropic: {kind: anthropic}\n";
        let base = BASE.replace(
            "  openai: {kind: openai}\n",
            &format!("  openai: {{kind: openai}}\n{anthropic}"),
        ) + "  sonnet: {provider: anthropic, model: claude-sonnet-4-6, tier: workhorse}\n";
        let msgs = |rules: &str| {
            let (_, d) = compile_text(&format!("{base}rules:\n{rules}"));
            d.iter()
                .map(|d| {
                    (
                        d.is_error(),
                        d.message.clone(),
                        d.help.clone().unwrap_or_default(),
                        d.span.is_some(),
                    )
                })
                .collect::<Vec<_>>()
        };
        // A valid cascade compiles clean, its checks defaulted from its keys.
        let (p, d) = compile_text(&format!(
            "{base}rules:\n  - {{name: all, use: local, escalate: {{to: budget, matches: \"^(yes|no)$\", confidence: {{min_mean_logprob: -0.8}}}}}}\n"
        ));
        assert!(d.is_empty(), "{d:?}");
        let c = p.rules[0].escalate.as_ref().unwrap();
        assert_eq!(c.when.len(), 3);
        assert!(c.wants_logprobs());
        // An unknown target, with a did-you-mean.
        let m = msgs("  - {name: all, use: local, escalate: {to: budgt}}\n");
        assert_eq!(m[0].1, "unknown model `budgt`");
        assert_eq!(m[0].2, "did you mean `budget`?");
        assert!(m[0].3);
        // Itself.
        let m = msgs("  - {name: all, use: local, escalate: {to: local}}\n");
        assert_eq!(m[0].1, "rule `all` escalates to its own model `local`");
        // A check listed without its setting; a setting never checked.
        let m = msgs("  - {name: all, use: local, escalate: {to: budget, when: [no_match]}}\n");
        assert_eq!(m[0].1, "`no_match` is listed but `matches` is not set");
        let m = msgs(
            "  - {name: all, use: local, escalate: {to: budget, when: [invalid_output], contains: ok}}\n",
        );
        assert_eq!(
            (m[0].0, m[0].1.as_str()),
            (false, "`contains` is set but `no_match` is not in `when`")
        );
        // Logprobs from a model that returns none: an error naming the kind.
        let m = msgs(
            "  - {name: all, use: sonnet, escalate: {to: budget, confidence: {min_mean_logprob: -1}}}\n",
        );
        assert!(m[0].0);
        assert_eq!(
            m[0].1,
            "`low_confidence` needs token logprobs, and `sonnet` (anthropic) returns none"
        );
        // Only confidential steps, escalated to the cloud.
        let m = msgs(
            "  - {name: secret, when: {sensitivity: {above: internal}}, use: local, escalate: {to: budget}}\n  - {name: all, use: local}\n",
        );
        assert_eq!(
            m[0].1,
            "rule `secret` matches only steps above cloud_max, and escalates to `budget`, a cloud model"
        );
        // A regex that does not compile.
        let m = msgs("  - {name: all, use: local, escalate: {to: budget, matches: \"(\"}}\n");
        assert_eq!(m[0].1, "`matches` is not a valid regular expression");
    }

    #[test]
    fn candidates_follow_fallback_chains_once() {
        let (p, _) = compile_text(&format!(
            "{BASE}rules:\n  - {{name: all, use: local}}\nfallbacks:\n  local: [budget]\n  budget: [local]\n"
        ));
        assert_eq!(p.candidates("local"), vec!["local", "budget"]);
    }

    #[test]
    fn a_tier_label_two_price_bands_off_is_a_warning() {
        let text = "version: 1\nproviders:\n  openai: {kind: openai}\n  anthropic: {kind: anthropic}\nmodels:\n  a: {provider: anthropic, model: claude-opus-5, tier: budget}\n  b: {provider: openai, model: gpt-4.1-nano, tier: flagship}\n  c: {provider: anthropic, model: claude-sonnet-4-6, tier: workhorse}\n  d: {provider: openai, model: gpt-5.4-mini, tier: budget}\n  e: {provider: openai, model: gpt-4.1-nano, tier: budget, pricing: {input_per_mtok: 20, output_per_mtok: 80}}\nrules:\n  - {name: all, use: a}\n";
        let (p, d) = compile_text(text);
        let found: Vec<(&str, String)> = d
            .iter()
            .filter(|d| d.code == "tier-price-mismatch")
            .map(|d| {
                let (line, _) = d.span.as_ref().expect("located").line_col();
                (
                    d.message.as_str(),
                    format!("{line} {}", d.label.as_deref().unwrap_or("")),
                )
            })
            .collect();
        assert_eq!(
            found,
            [
                (
                    "model `a` is labelled `budget` but `claude-opus-5` is flagship-priced",
                    "6 $10.00 per million tokens (3 input : 1 output)".to_owned()
                ),
                (
                    "model `b` is labelled `flagship` but `gpt-4.1-nano` is budget-priced",
                    "7 $0.17 per million tokens (3 input : 1 output)".to_owned()
                ),
                // The policy's own prices are what the label is checked against.
                (
                    "model `e` is labelled `budget` but `gpt-4.1-nano` is flagship-priced",
                    "10 $35.00 per million tokens (3 input : 1 output)".to_owned()
                ),
            ]
        );
        assert!(d.iter().all(|d| !d.is_error()), "{d:?}");
        assert_eq!(p.models.len(), 5);
    }
}
