//! `cargo bench --bench plan`: the dry run on a generated workflow of 10,000
//! steps (each reads an input and the step before it, one in ten is a deep
//! debugging step, one in five reads a confidential input), with the team
//! policy. Stages are measured apart so a regression points at its stage.
//! `boundary`: the provider boundary's search for withheld values.

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use tollgate::analyze;
use tollgate::catalog::Catalog;
use tollgate::diagnostic::SourceFile;
use tollgate::inputs;
use tollgate::plan;
use tollgate::policy;
use tollgate::schema::Format;
use tollgate::workflow::{self, Loaded, Workflow};
use tollgate::yaml::Document;

const STEPS: usize = 10_000;

fn generated_workflow(n: usize) -> String {
    let mut y = String::from(
        "version: 1\nname: generated\ninputs:\n  text: { type: string, sensitivity: internal, default: \"The service returned 502 for 8% of requests after the deploy.\" }\n  logs: { type: string, sensitivity: confidential, default: \"09:12 OOM killed export-worker\" }\nsteps:\n",
    );
    for i in 0..n {
        let (task, reasoning) = if i % 10 == 0 {
            ("debug", "deep")
        } else {
            ("summarize", "standard")
        };
        let input = if i % 5 == 0 { "logs" } else { "text" };
        y.push_str(&format!("  s{i}:\n    task: {task}\n    reasoning: {reasoning}\n    max_output_tokens: 200\n    prompt: |\n      Step {i}. Look at this: {{{{ inputs.{input} }}}}\n"));
        if i > 0 {
            y.push_str(&format!(
                "      Previous finding: {{{{ steps.s{}.output }}}}\n",
                i - 1
            ));
        }
    }
    y
}

fn load_workflow(text: &str) -> Loaded<Workflow> {
    let doc =
        Document::parse(SourceFile::new("generated.yaml", text.to_owned())).expect("valid YAML");
    workflow::from_document(doc, Format::Workflow).expect("valid workflow")
}

fn bench(c: &mut Criterion) {
    let text = generated_workflow(STEPS);
    let policy_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/default.yaml");
    let (_, policy) = policy::load(&policy_path).expect("the team policy loads");
    let _ = Catalog::builtin();

    let mut g = c.benchmark_group("plan_10k_steps");
    g.sample_size(10);
    g.bench_function("load (YAML + schema + serde)", |b| {
        b.iter(|| black_box(load_workflow(&text)))
    });
    g.bench_function("analyze (templates + DAG)", |b| {
        b.iter_batched(
            || load_workflow(&text),
            |w| black_box(analyze::analyze(w, Path::new(".")).expect("valid")),
            criterion::BatchSize::LargeInput,
        )
    });
    let analysis = analyze::analyze(load_workflow(&text), Path::new(".")).expect("valid");
    let values = inputs::resolve(&analysis.workflow.value, &[], true).expect("defaults");
    g.bench_function("build plan (render + tokens + route + cost)", |b| {
        b.iter(|| {
            black_box(
                plan::build(&analysis, &policy, "policies/default.yaml", &values).expect("plan"),
            )
        })
    });
    g.bench_function("end to end", |b| {
        b.iter(|| {
            let a = analyze::analyze(load_workflow(&text), Path::new(".")).expect("valid");
            black_box(plan::build(&a, &policy, "policies/default.yaml", &values).expect("plan"))
        })
    });
    g.finish();
}

/// The provider boundary's content check (`route::admit`) on a 2 KB
/// request, with the 100,000 values of a held confidential list withheld:
/// every cloud call of such a run pays it.
fn boundary(c: &mut Criterion) {
    use tollgate::route::Withheld;
    let values: Vec<String> = (0..100_000)
        .map(|i| format!("confidential ticket {i}"))
        .collect();
    // Near misses all along: every value's 20-byte prefix, 50 times over.
    let request = "The confidential ticket queue is empty. ".repeat(50);
    let mut g = c.benchmark_group("boundary");
    // What the check did before `Withheld`: a search per value.
    g.bench_function(
        "100k withheld values, 2 KB request, one value at a time",
        |b| {
            b.iter(|| {
                black_box(
                    values
                        .iter()
                        .any(|v| black_box(&request).contains(v.as_str())),
                )
            })
        },
    );
    let withheld = Withheld::new(values.clone());
    g.bench_function("100k withheld values, 2 KB request", |b| {
        b.iter(|| black_box(withheld.found_in(black_box(&request))))
    });
    g.finish();
}

criterion_group!(benches, bench, boundary);
criterion_main!(benches);
