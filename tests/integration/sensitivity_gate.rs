//! Property tests of the sensitivity gate, over many generated workflows and
//! policies: no step above `cloud_max` is ever routed to a cloud model, and a
//! step's effective level is never below anything it reads.

use proptest::prelude::*;
use serde_json::{Value, json};

use tollgate::analyze;
use tollgate::catalog::Catalog;
use tollgate::diagnostic::SourceFile;
use tollgate::inputs;
use tollgate::plan;
use tollgate::policy::{self, Locality, PolicyFile};
use tollgate::schema::Format;
use tollgate::workflow::{self, Workflow};
use tollgate::yaml::Document;

const LEVELS: [&str; 4] = ["public", "internal", "confidential", "secret"];
const TASKS: [&str; 4] = ["summarize", "classify", "debug", "write"];
const TIERS: [&str; 4] = ["local", "budget", "workhorse", "flagship"];

#[derive(Debug, Clone)]
struct GenModel {
    local: bool,
    tier: usize,
}

#[derive(Debug, Clone)]
struct GenRule {
    task: Option<usize>,
    above: Option<usize>,
    at_most: Option<usize>,
    deep: Option<bool>,
    model: usize,
}

#[derive(Debug, Clone)]
struct GenStep {
    task: usize,
    label: Option<usize>,
    deep: bool,
    reads_inputs: Vec<usize>,
    reads_steps: Vec<usize>,
    pin: Option<usize>,
}

fn model_strategy() -> impl Strategy<Value = GenModel> {
    (any::<bool>(), 0..4usize).prop_map(|(local, tier)| GenModel { local, tier })
}

fn rule_strategy(models: usize) -> impl Strategy<Value = GenRule> {
    (
        proptest::option::of(0..4usize),
        proptest::option::of(0..3usize),
        proptest::option::of(0..4usize),
        proptest::option::of(any::<bool>()),
        0..models,
    )
        .prop_map(|(task, above, at_most, deep, model)| GenRule {
            task,
            above,
            at_most,
            deep,
            model,
        })
}

fn step_strategy(index: usize, inputs: usize, models: usize) -> impl Strategy<Value = GenStep> {
    (
        0..4usize,
        proptest::option::of(0..4usize),
        any::<bool>(),
        proptest::collection::vec(0..inputs.max(1), 0..3),
        proptest::collection::vec(0..index.max(1), 0..3),
        proptest::option::weighted(0.2, 0..models),
    )
        .prop_map(move |(task, label, deep, ri, rs, pin)| GenStep {
            task,
            label,
            deep,
            reads_inputs: if inputs == 0 { vec![] } else { ri },
            reads_steps: if index == 0 { vec![] } else { rs },
            pin,
        })
}

#[derive(Debug, Clone)]
struct Case {
    cloud_max: usize,
    models: Vec<GenModel>,
    rules: Vec<GenRule>,
    fallbacks: Vec<(usize, usize)>,
    input_labels: Vec<Option<usize>>,
    steps: Vec<GenStep>,
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (
        0..4usize,
        proptest::collection::vec(model_strategy(), 1..5),
        0..4usize,
        1..9usize,
    )
        .prop_flat_map(|(cloud_max, models, n_inputs, n_steps)| {
            let m = models.len();
            let steps: Vec<_> = (0..n_steps)
                .map(|i| step_strategy(i, n_inputs, m))
                .collect();
            (
                Just(cloud_max),
                Just(models),
                proptest::collection::vec(rule_strategy(m), 0..5),
                proptest::collection::vec((0..m, 0..m), 0..4),
                proptest::collection::vec(proptest::option::of(0..4usize), n_inputs),
                steps,
            )
        })
        .prop_map(
            |(cloud_max, models, rules, fallbacks, input_labels, steps)| Case {
                cloud_max,
                models,
                rules,
                fallbacks,
                input_labels,
                steps,
            },
        )
}

fn policy_json(c: &Case) -> Value {
    let mut models = serde_json::Map::new();
    for (i, m) in c.models.iter().enumerate() {
        let provider = if m.local { "here" } else { "there" };
        models.insert(
            format!("m{i}"),
            json!({ "provider": provider, "model": format!("model-{i}"), "tier": TIERS[m.tier],
                    "context_window": 1_000_000,
                    "pricing": { "input_per_mtok": 1.0 + i as f64, "output_per_mtok": 2.0 + i as f64 } }),
        );
    }
    let mut rules: Vec<Value> = c
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut when = serde_json::Map::new();
            if let Some(t) = r.task {
                when.insert("task".into(), json!(TASKS[t]));
            }
            let mut bounds = serde_json::Map::new();
            if let Some(a) = r.above {
                bounds.insert("above".into(), json!(LEVELS[a]));
            }
            if let Some(a) = r.at_most {
                bounds.insert("at_most".into(), json!(LEVELS[a]));
            }
            if !bounds.is_empty() {
                when.insert("sensitivity".into(), Value::Object(bounds));
            }
            if let Some(d) = r.deep {
                when.insert(
                    "reasoning".into(),
                    json!(if d { "deep" } else { "standard" }),
                );
            }
            json!({ "name": format!("r{i}"), "when": when, "use": format!("m{}", r.model) })
        })
        .collect();
    rules.push(json!({ "name": "last", "use": "m0" }));
    let mut fallbacks = serde_json::Map::new();
    for (from, to) in &c.fallbacks {
        if from != to {
            let e = fallbacks
                .entry(format!("m{from}"))
                .or_insert_with(|| json!([]));
            let list = e.as_array_mut().unwrap();
            let name = json!(format!("m{to}"));
            if !list.contains(&name) {
                list.push(name);
            }
        }
    }
    json!({
        "version": 1,
        "sensitivity": { "levels": LEVELS, "cloud_max": LEVELS[c.cloud_max] },
        "providers": {
            "here": { "kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1" },
            "there": { "kind": "openai-compatible", "base_url": "https://llm.example.com/v1" }
        },
        "models": models,
        "rules": rules,
        "fallbacks": fallbacks,
    })
}

fn workflow_json(c: &Case) -> Value {
    let mut inputs = serde_json::Map::new();
    for (i, l) in c.input_labels.iter().enumerate() {
        let mut decl = json!({ "type": "string", "default": format!("value {i}") });
        if let Some(l) = l {
            decl["sensitivity"] = json!(LEVELS[*l]);
        }
        inputs.insert(format!("in{i}"), decl);
    }
    let mut steps = serde_json::Map::new();
    for (i, s) in c.steps.iter().enumerate() {
        let mut prompt = format!("Step {i}.");
        for r in &s.reads_inputs {
            prompt.push_str(&format!(" {{{{ inputs.in{r} }}}}"));
        }
        for r in &s.reads_steps {
            prompt.push_str(&format!(" {{{{ steps.s{r}.output }}}}"));
        }
        let mut step = json!({ "task": TASKS[s.task], "prompt": prompt, "max_output_tokens": 50,
                               "reasoning": if s.deep { "deep" } else { "standard" } });
        if let Some(l) = s.label {
            step["sensitivity"] = json!(LEVELS[l]);
        }
        if let Some(p) = s.pin {
            step["model"] = json!(format!("m{p}"));
        }
        steps.insert(format!("s{i}"), step);
    }
    json!({ "version": 1, "name": "generated", "inputs": inputs, "steps": steps })
}

fn parse(name: &str, v: &Value) -> Document {
    Document::parse(SourceFile::new(
        name,
        serde_json::to_string_pretty(v).unwrap(),
    ))
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn no_step_above_cloud_max_reaches_a_cloud_model(case in case_strategy()) {
        let pdoc = parse("p.yaml", &policy_json(&case));
        let pfile: workflow::Loaded<PolicyFile> = workflow::from_document(pdoc, Format::Policy).unwrap();
        let (policy, diags) = policy::compile(&pfile.value, &pfile.doc, Catalog::builtin());
        // Generated rule lists may shadow each other; such policies are
        // rejected by `check` and never routed.
        prop_assume!(!diags.iter().any(|d| d.is_error()));

        let wdoc = parse("w.yaml", &workflow_json(&case));
        let w: workflow::Loaded<Workflow> = workflow::from_document(wdoc, Format::Workflow).unwrap();
        let analysis = analyze::analyze(w, std::path::Path::new(".")).unwrap();
        let values = inputs::resolve(&analysis.workflow.value, &[], false).unwrap();
        let Ok(plan) = plan::build(&analysis, &policy, "p.yaml", &values) else {
            // No admissible route is an error the user sees; never a cloud route.
            return Ok(());
        };
        for s in &plan.steps {
            let level = policy.level_index(&s.sensitivity.level).unwrap();
            let model = s.model.as_ref().expect("every running step has a model");
            prop_assert!(
                level <= policy.cloud_max || model.locality == Locality::Local,
                "step {} is {} but went to cloud model {}", s.id, s.sensitivity.level, model.alias
            );
            // Effective sensitivity is at least everything the step reads.
            let i: usize = s.id[1..].parse().unwrap();
            let g = &case.steps[i];
            for r in &g.reads_inputs {
                let input_level = case.input_labels[*r].unwrap_or(0);
                prop_assert!(level >= input_level);
            }
            for r in &g.reads_steps {
                let up = plan.steps.iter().find(|u| u.id == format!("s{r}")).unwrap();
                prop_assert!(level >= policy.level_index(&up.sensitivity.level).unwrap());
            }
            if let Some(l) = g.label {
                prop_assert!(level >= l);
            }
            // The gate at the provider boundary agrees with routing, for
            // every model: the routed one passes, no cloud model takes a
            // request above cloud_max, and none takes a withheld value.
            let label = tollgate::route::Label { level, withheld: std::sync::Arc::new(tollgate::route::Withheld::new(vec!["CONFIDENTIAL-VALUE".to_owned()])) };
            prop_assert!(tollgate::route::admit(&policy, &policy.models[&model.alias], &label, &["a prompt"]).is_ok());
            for m in policy.models.values() {
                let cloud = m.locality != Locality::Local;
                let admitted = tollgate::route::admit(&policy, m, &label, &["a prompt"]).is_ok();
                prop_assert_eq!(admitted, !cloud || level <= policy.cloud_max);
                let carrying = tollgate::route::admit(&policy, m, &label, &["x CONFIDENTIAL-VALUE y"]).is_ok();
                prop_assert_eq!(carrying, !cloud);
            }
        }
    }
}

/// Ways a template can read input `r`: plain, and the constructs that hid
/// reads from the analysis before (slices, aliases, macro defaults, `with`,
/// loops over the whole mapping, namespaces, computed keys, `tojson` of the
/// whole mapping, filter blocks), and two that `check` must refuse.
fn construct(kind: usize, r: usize) -> (String, bool) {
    let t = match kind {
        0 => format!("{{{{ inputs.in{r} }}}}"),
        1 => format!("{{{{ inputs.in{r}[:100] }}}}"),
        2 => format!("{{% set x = inputs %}}{{{{ x.in{r} }}}}"),
        3 => {
            format!("{{% macro m{r}(x=inputs) %}}{{{{ x.in{r} }}}}{{% endmacro %}}{{{{ m{r}() }}}}")
        }
        4 => format!("{{% with x = inputs.in{r} %}}{{{{ x }}}}{{% endwith %}}"),
        5 => format!(
            "{{% for k, v in inputs|items %}}{{% if k == 'in{r}' %}}{{{{ v }}}}{{% endif %}}{{% endfor %}}"
        ),
        6 => "{{ inputs | tojson }}".to_owned(),
        7 => format!("{{% set ns = namespace(v=inputs) %}}{{{{ ns.v.in{r} }}}}"),
        8 => format!("{{{{ inputs['in' ~ '{r}'] }}}}"),
        9 => format!("{{% filter upper %}}{{{{ inputs.in{r} }}}}{{% endfilter %}}"),
        10 => format!("{{% set inputs = inputs %}}{{{{ inputs.in{r} }}}}"),
        11 => "{{ debug() }}".to_owned(),
        _ => {
            format!("{{% for (a, inputs) in [(1, inputs)] %}}{{{{ inputs.in{r} }}}}{{% endfor %}}")
        }
    };
    (t, kind >= 10)
}

/// A value that survives `upper` and is found verbatim in any rendering.
fn canary(i: usize) -> String {
    format!("CANARY_IN{i}_VALUE")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Whatever the template does, its rendered text holds the value of an
    /// input only if the analysis counted the read (so the step is at least
    /// as sensitive as that input); constructs that hide reads are refused.
    #[test]
    fn rendered_text_holds_only_what_the_analysis_counts(
        labels in proptest::collection::vec(proptest::option::of(0..4usize), 1..4),
        reads in proptest::collection::vec(proptest::collection::vec((0..13usize, 0..4usize), 0..4), 1..4),
    ) {
        let mut inputs = serde_json::Map::new();
        for (i, l) in labels.iter().enumerate() {
            let mut decl = json!({ "type": "string", "default": canary(i) });
            if let Some(l) = l {
                decl["sensitivity"] = json!(LEVELS[*l]);
            }
            inputs.insert(format!("in{i}"), decl);
        }
        let mut refused_expected = false;
        let mut steps = serde_json::Map::new();
        for (i, rs) in reads.iter().enumerate() {
            let mut prompt = format!("Step {i}.");
            for (kind, r) in rs {
                let (t, refused) = construct(*kind, r % labels.len());
                refused_expected |= refused;
                prompt.push_str(&t);
            }
            steps.insert(format!("s{i}"), json!({ "task": "write", "prompt": prompt }));
        }
        let wf = json!({ "version": 1, "name": "hostile", "inputs": inputs, "steps": steps });
        let w: workflow::Loaded<Workflow> =
            workflow::from_document(parse("w.yaml", &wf), Format::Workflow).unwrap();
        let analysis = match analyze::analyze(w, std::path::Path::new(".")) {
            Ok(a) => a,
            Err(diags) => {
                prop_assert!(refused_expected, "refused a harmless template: {:?}", diags.first().map(|d| &d.message));
                prop_assert!(diags.iter().all(|d| d.span.is_some()), "an error without a location");
                return Ok(());
            }
        };
        prop_assert!(!refused_expected, "a shadowing or debug() template passed check");
        let values: serde_json::Map<String, Value> = (0..labels.len())
            .map(|i| (format!("in{i}"), json!(canary(i))))
            .collect();
        for (id, info) in &analysis.steps {
            let ctx = info.context(&values, |_| Value::Null).base();
            let text = tollgate::template::render(&analysis.env, &info.prompt.text, &ctx).unwrap();
            for i in 0..labels.len() {
                if text.contains(&canary(i)) {
                    prop_assert!(
                        info.reads_inputs.contains(&format!("in{i}")),
                        "step {id} rendered input in{i} the analysis did not count"
                    );
                }
            }
        }
    }
}
