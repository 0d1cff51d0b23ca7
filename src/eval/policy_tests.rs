//! Policy test files: step facts in, the expected route out.
//!
//! A policy is code that decides where data goes and what it costs; these
//! files are its unit tests. Each test gives the facts a workflow step would
//! give routing (task, sensitivity, input tokens, tags, latency, …) and what
//! the route must be (a model, a tier, a locality, the deciding rule, or no
//! route at all). Routing is [`route::route`], the very function `plan` and
//! `run` call, so a passing test is a promise about every workflow: "a
//! confidential step never leaves the machine", "architecture goes to the
//! flagship", "a 300k-token prompt goes to a model with a window for it".
//!
//! Nothing is called and nothing is spent: a whole file runs in
//! microseconds. `tollgate test` runs these files beside suites and
//! `tollgate check` validates them (every name they use is checked against
//! the policy, located, with did-you-mean).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::assertion::{locality_name, quoted as or_list};
use crate::diagnostic::{Diagnostic, did_you_mean, one_of};
use crate::policy::{self, Locality, Policy, Tier};
use crate::route::{self, Decider, Facts, TierUsage};
use crate::schema::Format;
use crate::workflow::{self, DEFAULT_MAX_OUTPUT_TOKENS, Latency, Reasoning};
use crate::yaml::Document;

/// Input tokens of a test that does not say.
pub const DEFAULT_INPUT_TOKENS: u64 = 1000;

/// Does this document look like a policy test file (for `check` and `test`,
/// which recognise files by their content)?
pub fn is_policy_test(doc: &Document) -> bool {
    doc.root
        .as_object()
        .is_some_and(|o| o.contains_key("tests") && o.contains_key("policy"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    policy: String,
    tests: Vec<TestDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestDef {
    name: String,
    step: StepFacts,
    expect: ExpectDef,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFacts {
    task: String,
    sensitivity: Option<String>,
    input_tokens: Option<u64>,
    max_output_tokens: Option<u64>,
    #[serde(default)]
    reasoning: Reasoning,
    #[serde(default)]
    latency: Latency,
    #[serde(default)]
    tags: BTreeSet<String>,
    model: Option<String>,
    calls: Option<u64>,
    /// The step's rendered prompt: what the policy's learned routers score.
    prompt: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(t) => vec![t],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectDef {
    model: Option<OneOrMany<String>>,
    not_model: Option<OneOrMany<String>>,
    tier: Option<OneOrMany<Tier>>,
    locality: Option<Locality>,
    provider: Option<String>,
    rule: Option<String>,
    routed: Option<bool>,
    escalates_to: Option<String>,
    escalates: Option<bool>,
}

/// A loaded, checked policy test file.
pub struct PolicyTests {
    pub path: PathBuf,
    pub policy_path: PathBuf,
    pub policy: Policy,
    pub tests: Vec<PolicyTest>,
}

/// One test, its names checked against the policy.
pub struct PolicyTest {
    pub name: String,
    /// `file:line:column` of the test.
    pub origin: String,
    task: String,
    sensitivity: usize,
    input_tokens: u64,
    max_output_tokens: u64,
    reasoning: Reasoning,
    latency: Latency,
    tags: BTreeSet<String>,
    pin: Option<String>,
    calls: u64,
    /// The policy's routers' scores of the test's `prompt` (empty without
    /// one: a `router:` condition then does not hold).
    router_scores: Vec<f64>,
    expect: Expect,
}

/// What the route must be; every part given must hold.
#[derive(Debug, Default)]
struct Expect {
    model: Vec<String>,
    not_model: Vec<String>,
    tier: Vec<Tier>,
    locality: Option<Locality>,
    provider: Option<String>,
    rule: Option<String>,
    routed: Option<bool>,
    /// A cascade's escalation target (after the gate), or whether the
    /// route escalates at all.
    escalates_to: Option<String>,
    escalates: Option<bool>,
}

/// The route a test got, as the report shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Got {
    /// `None`: no model fits.
    pub model: Option<String>,
    pub tier: Option<Tier>,
    pub locality: Option<Locality>,
    pub provider: Option<String>,
    /// What decided: `rule NAME`, a pin, or nothing matched.
    pub decided_by: String,
    /// Candidates passed over, with the reason (why a route is missing).
    pub passed_over: Vec<String>,
    /// Where the rule's cascade escalates (`route::escalation`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalates_to: Option<String>,
}

/// One test's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub name: String,
    pub origin: String,
    pub passed: bool,
    /// What did not hold, one line each (empty when passed).
    pub failures: Vec<String>,
    pub got: Got,
}

/// Loads a policy test file and its policy, checking every name the tests
/// use against the policy. Every problem is reported at once.
pub fn load(path: &Path) -> Result<PolicyTests, Vec<Diagnostic>> {
    from_document(path, workflow::load_document(path)?)
}

/// [`load`] of a file already read and parsed (`check` and `test` read
/// each file once to tell what it is).
pub fn from_document(path: &Path, doc: Document) -> Result<PolicyTests, Vec<Diagnostic>> {
    let loaded = workflow::from_document::<File>(doc, Format::PolicyTest)?;
    let doc = &loaded.doc;
    let policy_path = super::suite::clean(&loaded.dir().join(&loaded.value.policy));
    let policy = match policy::load(&policy_path) {
        Ok((_, p)) => p,
        Err(mut d) => {
            // The policy's own errors, then where it was named.
            d.push(
                Diagnostic::error(
                    "policy-test-policy",
                    format!("the policy `{}` does not load", policy_path.display()),
                )
                .at(doc.span("/policy"))
                .with_help("fix the errors above, or point `policy:` at the file under test (relative to this file)"),
            );
            return Err(d);
        }
    };
    let mut diags = Vec::new();
    let mut names = BTreeSet::new();
    let tests = loaded
        .value
        .tests
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let base = format!("/tests/{i}");
            if !names.insert(t.name.clone()) {
                diags.push(
                    Diagnostic::error(
                        "duplicate-test",
                        format!("two tests are named `{}`", t.name),
                    )
                    .at(doc.span(&format!("{base}/name")))
                    .with_help(
                        "test names must be unique in a file: failures are reported by name",
                    ),
                );
            }
            compile_test(t, &base, doc, &policy, &mut diags)
        })
        .collect();
    if diags.iter().any(Diagnostic::is_error) {
        return Err(diags);
    }
    Ok(PolicyTests {
        path: path.to_path_buf(),
        policy_path,
        policy,
        tests,
    })
}

/// A name a test uses, checked against the names the policy has.
fn known<'a>(
    diags: &mut Vec<Diagnostic>,
    doc: &Document,
    at: &str,
    what: &str,
    name: &str,
    names: impl IntoIterator<Item = &'a str> + Clone,
) -> bool {
    if names.clone().into_iter().any(|n| n == name) {
        return true;
    }
    let mut d = Diagnostic::error(
        "policy-test-unknown-name",
        format!("the policy has no {what} `{name}`"),
    )
    .at(doc.span(at));
    d = match did_you_mean(name, names.clone()) {
        Some(hint) => d.with_help(hint),
        None => d.with_help(format!("the policy's {what}s: {}", one_of(names))),
    };
    diags.push(d);
    false
}

fn compile_test(
    t: TestDef,
    base: &str,
    doc: &Document,
    policy: &Policy,
    diags: &mut Vec<Diagnostic>,
) -> PolicyTest {
    let model_names = || policy.models.keys().map(String::as_str);
    // A typo in a task would silently fall to the catch-all rule: the
    // same vocabulary as a workflow's steps (the known tasks, plus the
    // policy's own).
    let task_known = workflow::KNOWN_TASKS
        .iter()
        .copied()
        .chain(policy.tasks.iter().map(String::as_str))
        .any(|k| k == t.step.task);
    if !task_known {
        diags.push(
            workflow::unknown_task(
                &t.step.task,
                workflow::KNOWN_TASKS
                    .iter()
                    .copied()
                    .chain(policy.tasks.iter().map(String::as_str)),
                "the policy",
            )
            .at(doc.span(&format!("{base}/step/task"))),
        );
    }
    let sensitivity = match &t.step.sensitivity {
        Some(label) => {
            let at = format!("{base}/step/sensitivity");
            if known(
                diags,
                doc,
                &at,
                "sensitivity label",
                label,
                policy.levels.iter().map(String::as_str),
            ) {
                policy.level_index(label).unwrap_or(policy.default_level)
            } else {
                policy.default_level
            }
        }
        None => policy.default_level,
    };
    if let Some(pin) = &t.step.model {
        known(
            diags,
            doc,
            &format!("{base}/step/model"),
            "model",
            pin,
            model_names(),
        );
    }
    let model = t.expect.model.map(OneOrMany::into_vec).unwrap_or_default();
    let not_model = t
        .expect
        .not_model
        .map(OneOrMany::into_vec)
        .unwrap_or_default();
    for (key, list) in [("model", &model), ("not_model", &not_model)] {
        let many = list.len() > 1;
        for (j, m) in list.iter().enumerate() {
            let at = if many {
                format!("{base}/expect/{key}/{j}")
            } else {
                format!("{base}/expect/{key}")
            };
            known(diags, doc, &at, "model", m, model_names());
        }
    }
    if let Some(p) = &t.expect.provider {
        known(
            diags,
            doc,
            &format!("{base}/expect/provider"),
            "provider",
            p,
            policy.providers.keys().map(String::as_str),
        );
    }
    if let Some(m) = &t.expect.escalates_to {
        known(
            diags,
            doc,
            &format!("{base}/expect/escalates_to"),
            "model",
            m,
            model_names(),
        );
    }
    if let Some(r) = &t.expect.rule {
        known(
            diags,
            doc,
            &format!("{base}/expect/rule"),
            "rule",
            r,
            policy.rules.iter().map(|r| r.name.as_str()),
        );
    }
    if t.expect.routed == Some(false) {
        let contradicts = !model.is_empty()
            || t.expect.tier.is_some()
            || t.expect.locality.is_some()
            || t.expect.provider.is_some();
        if contradicts {
            diags.push(
                Diagnostic::error(
                    "policy-test-contradiction",
                    "`routed: false` expects no route, so a model, tier, locality or provider cannot hold too",
                )
                .at(doc.span(&format!("{base}/expect")))
                .with_help("keep `routed: false` (and `rule:` if you want the deciding rule checked), or drop it"),
            );
        }
    }
    let origin = doc
        .span(base)
        .map(|s| s.location())
        .unwrap_or_else(|| doc.file.display_path());
    PolicyTest {
        name: t.name,
        origin,
        task: t.step.task,
        sensitivity,
        input_tokens: t.step.input_tokens.unwrap_or(DEFAULT_INPUT_TOKENS),
        max_output_tokens: t
            .step
            .max_output_tokens
            .unwrap_or(u64::from(DEFAULT_MAX_OUTPUT_TOKENS)),
        reasoning: t.step.reasoning,
        latency: t.step.latency,
        tags: t.step.tags,
        pin: t.step.model,
        calls: t.step.calls.unwrap_or(1),
        router_scores: match &t.step.prompt {
            Some(p) => policy.router_scores(std::iter::once(crate::router::text(std::iter::once(
                p.as_str(),
            )))),
            None => Vec::new(),
        },
        expect: Expect {
            model,
            not_model,
            tier: t.expect.tier.map(OneOrMany::into_vec).unwrap_or_default(),
            locality: t.expect.locality,
            provider: t.expect.provider,
            rule: t.expect.rule,
            routed: t.expect.routed,
            escalates_to: t.expect.escalates_to,
            escalates: t.expect.escalates,
        },
    }
}

impl PolicyTests {
    /// Runs every test through [`route::route`], as `plan` would route a
    /// step with these facts at the start of a run.
    pub fn run(&self) -> Vec<Outcome> {
        self.tests.iter().map(|t| t.run(&self.policy)).collect()
    }
}

impl PolicyTest {
    fn run(&self, policy: &Policy) -> Outcome {
        let facts = Facts {
            task: &self.task,
            sensitivity: self.sensitivity,
            input_tokens: self.input_tokens,
            reasoning: self.reasoning,
            latency: self.latency,
            tags: &self.tags,
            pin: self.pin.as_deref(),
            max_output_tokens: self.max_output_tokens,
            calls: self.calls,
            router_scores: &self.router_scores,
            attachments: &[],
        };
        // The step alone in its run: tier shares are counted over its own
        // calls, as for a one-step workflow.
        let usage = TierUsage {
            used: Default::default(),
            total_calls: self.calls,
        };
        // The test gives one count; every model's window is checked with it
        // (tokenizers differ by a few percent, which a test should not hinge on).
        let tokens = self.input_tokens;
        let decision = route::route(policy, &facts, &usage, &|_| tokens);
        let chosen = decision.model.as_deref().and_then(|m| policy.models.get(m));
        let escalates_to =
            route::escalation(policy, &decision, &facts, &|_| tokens).and_then(|e| e.to);
        let got = Got {
            model: decision.model.clone(),
            tier: chosen.map(|m| m.tier),
            locality: chosen.map(|m| m.locality),
            provider: chosen.map(|m| m.provider.clone()),
            decided_by: decision
                .decider
                .as_ref()
                .map_or_else(|| "no rule matched".to_owned(), Decider::label),
            passed_over: decision
                .passed_over
                .iter()
                .map(|r| format!("{}: {}", r.model, r.why))
                .collect(),
            escalates_to,
        };
        let failures = self.check(&got, decision.decider.as_ref());
        Outcome {
            name: self.name.clone(),
            origin: self.origin.clone(),
            passed: failures.is_empty(),
            failures,
            got,
        }
    }

    fn check(&self, got: &Got, decider: Option<&Decider>) -> Vec<String> {
        let e = &self.expect;
        let mut out = Vec::new();
        let rule = match decider {
            Some(Decider::Rule { name, .. }) => Some(name.as_str()),
            _ => None,
        };
        if let Some(want) = &e.rule {
            if rule != Some(want.as_str()) {
                out.push(format!(
                    "expected rule `{want}` to decide, got {}",
                    got.decided_by
                ));
            }
        }
        match (e.routed, &got.model) {
            (Some(false), Some(m)) => {
                out.push(format!("expected no route, got model `{m}`"));
                return out;
            }
            (Some(false), None) => return out,
            (_, None) => {
                let why = if got.passed_over.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", got.passed_over.join("; "))
                };
                out.push(format!(
                    "expected a route, got none: {}{why}",
                    got.decided_by
                ));
                return out;
            }
            (_, Some(_)) => {}
        }
        let model = got.model.as_deref().unwrap_or_default();
        if !e.model.is_empty() && !e.model.iter().any(|m| m == model) {
            out.push(format!(
                "expected model {}, got `{model}`",
                or_list(&e.model)
            ));
        }
        if e.not_model.iter().any(|m| m == model) {
            out.push(format!(
                "expected any model but {}, got `{model}`",
                or_list(&e.not_model)
            ));
        }
        if let Some(tier) = got.tier {
            if !e.tier.is_empty() && !e.tier.contains(&tier) {
                let want: Vec<String> = e.tier.iter().map(|t| t.name().to_owned()).collect();
                out.push(format!(
                    "expected tier {}, got {tier} (model `{model}`)",
                    or_list(&want)
                ));
            }
        }
        if let (Some(want), Some(have)) = (e.locality, got.locality) {
            if want != have {
                out.push(format!(
                    "expected locality {}, got {} (model `{model}`)",
                    locality_name(want),
                    locality_name(have)
                ));
            }
        }
        if let (Some(want), Some(have)) = (&e.provider, &got.provider) {
            if want != have {
                out.push(format!(
                    "expected provider `{want}`, got `{have}` (model `{model}`)"
                ));
            }
        }
        let escalates = got.escalates_to.as_deref();
        if let Some(want) = &e.escalates_to {
            if escalates != Some(want.as_str()) {
                out.push(format!(
                    "expected the cascade to escalate to `{want}`, got {}",
                    escalates.map_or_else(|| "no escalation".to_owned(), |m| format!("`{m}`"))
                ));
            }
        }
        if let Some(want) = e.escalates {
            if want != escalates.is_some() {
                out.push(match escalates {
                    Some(m) => format!("expected no escalation, got one to `{m}`"),
                    None => "expected an escalation, got none".to_owned(),
                });
            }
        }
        out
    }
}

/// The route in a few words: `model (tier, locality), rule X`.
pub fn describe(got: &Got) -> String {
    match (&got.model, got.tier, got.locality) {
        (Some(m), Some(t), Some(l)) => {
            let escalates = got
                .escalates_to
                .as_ref()
                .map(|e| format!(", escalates to {e}"))
                .unwrap_or_default();
            format!(
                "{m} ({t}, {}), {}{escalates}",
                locality_name(l),
                got.decided_by
            )
        }
        _ => format!("no route ({})", got.decided_by),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(policy_tests: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        std::fs::copy(
            root.join("policies/default.yaml"),
            dir.path().join("policy.yaml"),
        )
        .expect("copy policy");
        let path = dir.path().join("tests.yaml");
        std::fs::write(&path, policy_tests).expect("write tests");
        (dir, path)
    }

    /// A cascade's escalation is testable: the target, and that the gate
    /// never lets a confidential step escalate to the cloud.
    #[test]
    fn cascades_are_asserted_through_the_gate() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join("policy.yaml"),
            "version: 1\nproviders:\n  ollama: {kind: openai-compatible, base_url: \"http://127.0.0.1:11434/v1\"}\n  openai: {kind: openai}\n\
             models:\n  local: {provider: ollama, model: small, tier: local, context_window: 32768}\n  \
             big-local: {provider: ollama, model: big, tier: local, context_window: 32768}\n  \
             budget: {provider: openai, model: gpt-4o-mini, tier: budget}\n\
             rules:\n  - {name: summaries, when: {task: summarize}, use: local, escalate: {to: budget}}\n  - {name: rest, use: budget}\n",
        )
        .unwrap();
        let path = dir.path().join("tests.yaml");
        std::fs::write(
            &path,
            "policy: policy.yaml\ntests:\n  \
             - {name: public escalates to the cloud, step: {task: summarize}, expect: {model: local, escalates_to: budget}}\n  \
             - {name: confidential never escalates to the cloud, step: {task: summarize, sensitivity: confidential}, expect: {escalates: false}}\n  \
             - {name: wrong on purpose, step: {task: summarize, sensitivity: confidential}, expect: {escalates_to: budget}}\n  \
             - {name: no cascade here, step: {task: classify}, expect: {escalates: false}}\n",
        )
        .unwrap();
        let outcomes = load(&path).expect("loads").run();
        let passed: Vec<bool> = outcomes.iter().map(|o| o.passed).collect();
        assert_eq!(passed, [true, true, false, true], "{outcomes:#?}");
        assert_eq!(
            outcomes[2].failures,
            ["expected the cascade to escalate to `budget`, got no escalation"]
        );
        assert_eq!(
            describe(&outcomes[0].got),
            "local (local, local), rule summaries, escalates to budget"
        );
    }

    #[test]
    fn the_shipped_policy_tests_pass() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let tests = load(&root.join("policies/tests/default.yaml")).expect("loads");
        let outcomes = tests.run();
        assert!(outcomes.len() >= 8);
        let failed: Vec<_> = outcomes.iter().filter(|o| !o.passed).collect();
        assert!(failed.is_empty(), "{failed:#?}");
    }

    #[test]
    fn a_broken_promise_fails_with_what_was_expected_and_what_came() {
        let (_dir, path) = project(
            "policy: policy.yaml\ntests:\n  - name: confidential stays\n    step: { task: debug, sensitivity: confidential }\n    expect: { locality: cloud, tier: [budget, workhorse], rule: hard-problems }\n",
        );
        let tests = load(&path).expect("loads");
        let [o] = tests.run().try_into().expect("one outcome");
        assert!(!o.passed);
        assert_eq!(o.got.model.as_deref(), Some("local"));
        assert_eq!(
            o.failures,
            [
                "expected rule `hard-problems` to decide, got rule sensitive-stays-local",
                "expected tier one of `budget`, `workhorse`, got local (model `local`)",
                "expected locality cloud, got local (model `local`)",
            ]
        );
        assert!(o.origin.ends_with("tests.yaml:3:5"), "{}", o.origin);
    }

    #[test]
    fn expecting_no_route_fails_when_a_model_fits_and_passes_when_none_does() {
        let (_dir, path) = project(
            "policy: policy.yaml\ntests:\n  - name: fits\n    step: { task: debug }\n    expect: { routed: false }\n  - name: too big for the local window\n    step: { task: debug, sensitivity: secret, input_tokens: 50000 }\n    expect: { routed: false }\n  - name: expects a route\n    step: { task: debug, sensitivity: secret, input_tokens: 50000 }\n    expect: { locality: local }\n",
        );
        let outcomes = load(&path).expect("loads").run();
        assert_eq!(
            outcomes[0].failures,
            ["expected no route, got model `workhorse`"]
        );
        assert!(outcomes[1].passed, "{:?}", outcomes[1]);
        assert!(!outcomes[2].passed);
        assert!(
            outcomes[2].failures[0].starts_with("expected a route, got none: rule sensitive-stays-local (local: context window too small"),
            "{:?}",
            outcomes[2].failures
        );
    }

    #[test]
    fn unknown_names_are_located_with_did_you_mean() {
        let (_dir, path) = project(
            "policy: policy.yaml\ntests:\n  - name: a\n    step: { task: debgu, sensitivity: confidental, model: flagshp }\n    expect: { model: [local, workhorce], rule: sensitive-stays-locl, provider: olama }\n  - name: a\n    step: { task: debug }\n    expect: { routed: false, tier: local }\n",
        );
        let Err(diags) = load(&path) else {
            panic!("bad names must not load")
        };
        let got: Vec<(String, Option<String>, Option<String>)> = diags
            .iter()
            .map(|d| {
                (
                    d.message.clone(),
                    d.span.as_ref().map(|s| {
                        let (l, c) = s.line_col();
                        format!("{l}:{c}")
                    }),
                    d.help.clone(),
                )
            })
            .collect();
        let msgs: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
        assert_eq!(
            msgs,
            [
                "unknown task `debgu`",
                "the policy has no sensitivity label `confidental`",
                "the policy has no model `flagshp`",
                "the policy has no model `workhorce`",
                "the policy has no provider `olama`",
                "the policy has no rule `sensitive-stays-locl`",
                "two tests are named `a`",
                "`routed: false` expects no route, so a model, tier, locality or provider cannot hold too",
            ]
        );
        assert_eq!(got[0].1.as_deref(), Some("4:19"));
        assert!(
            got[0]
                .2
                .as_deref()
                .is_some_and(|h| h.starts_with("did you mean `debug`?"))
        );
        assert_eq!(got[1].1.as_deref(), Some("4:39"));
        assert_eq!(got[1].2.as_deref(), Some("did you mean `confidential`?"));
        assert_eq!(got[3].2.as_deref(), Some("did you mean `workhorse`?"));
    }

    #[test]
    fn a_policy_that_does_not_load_is_reported_where_it_is_named() {
        let (_dir, path) = project(
            "policy: missing.yaml\ntests:\n  - name: a\n    step: { task: debug }\n    expect: { tier: local }\n",
        );
        let Err(diags) = load(&path) else {
            panic!("a missing policy must not load")
        };
        let last = diags.last().expect("a diagnostic");
        assert!(last.message.contains("does not load"), "{}", last.message);
        assert_eq!(last.span.as_ref().map(|s| s.line_col()), Some((1, 9)));
    }
}
