//! `tollgate plan`: the dry run.

use std::path::{Path, PathBuf};

use super::journal::{self, StateArg};
use super::{
    OutputFormat, default_policy, exit, load_both, print_out, report, warn, with_lifecycle,
};
use crate::analyze::Analysis;
use crate::diagnostic::{Diagnostic, RenderOptions};
use crate::inputs::{self, Inputs, RawInput};
use crate::plan::compare::{self, FailOn};
use crate::policy::Policy;
use crate::{git, plan, render};

/// What `plan` and `plan --compare` start from: the workflow, the policy
/// (the default one when none is given) and the input values.
struct Loaded {
    analysis: Analysis,
    policy: Policy,
    policy_path: PathBuf,
    values: Inputs,
}

/// Loads the workflow and the policy, then the inputs; `extra` is another
/// policy whose warnings show with theirs (the baseline of `--compare`).
fn load(
    workflow_path: &Path,
    policy_path: Option<PathBuf>,
    extra: Option<&Policy>,
    raw: &[RawInput],
    options: RenderOptions,
) -> Result<Loaded, Vec<Diagnostic>> {
    let policy_path = policy_path.unwrap_or_else(default_policy);
    let (analysis, policy) = load_both(workflow_path, &policy_path)?;
    // Plain http to a cloud provider included: warned about here, refused
    // by `run`.
    let extra_warnings = extra.map(|p| p.warnings.as_slice()).unwrap_or_default();
    warn(
        policy
            .warnings
            .iter()
            .chain(extra_warnings)
            .chain(&analysis.warnings),
        options,
    );
    let values = inputs::resolve(&analysis.workflow.value, raw, true)?;
    Ok(Loaded {
        analysis,
        policy,
        policy_path,
        values,
    })
}

pub(super) fn cmd_plan(
    workflow_path: &Path,
    policy_path: Option<PathBuf>,
    raw: &[RawInput],
    format: OutputFormat,
    state: &StateArg,
    options: RenderOptions,
) -> u8 {
    let Loaded {
        analysis,
        policy,
        policy_path,
        values,
    } = match load(workflow_path, policy_path, None, raw, options) {
        Ok(l) => l,
        Err(d) => return report(d, format, options),
    };
    let history = journal::escalation_history(state, &policy);
    match plan::build_with_history(
        &analysis,
        &policy,
        &policy_path.display().to_string(),
        &values,
        &history,
    ) {
        Ok(plan) => {
            // What is left of the daily and monthly budgets, from the journal.
            let left = journal::remaining_budgets(state, &policy);
            match format {
                OutputFormat::Text => {
                    let mut text = render::plan_text(&plan);
                    if let Some(left) = &left {
                        text.push_str(&render::budgets_left_text(left, plan.totals.cost.high));
                    }
                    print_out(&text)
                }
                OutputFormat::Json => {
                    let mut v = serde_json::to_value(&plan).unwrap_or_default();
                    if let (Some(left), Some(obj)) = (left, v.as_object_mut()) {
                        obj.insert("budgets_left".to_owned(), left);
                    }
                    print_out(&serde_json::to_string_pretty(&v).unwrap_or_default())
                }
            }
            exit::OK
        }
        Err(d) => report(d, format, options),
    }
}

/// What `plan --compare --fail-on` refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum FailOnArg {
    /// The expected total cost rises.
    MoreCost,
    /// A step leaves the machine, or more calls go to the cloud.
    MoreCloud,
}

/// `plan --compare BASELINE`: the workflow planned under the policy and
/// under the baseline, step by step. Exit 1 when `--fail-on` finds the
/// change refused, 2 for bad input.
pub(super) fn cmd_compare(
    workflow_path: &Path,
    policy_path: Option<PathBuf>,
    baseline: &str,
    fail_on: &[FailOnArg],
    raw: &[RawInput],
    format: OutputFormat,
    options: RenderOptions,
) -> u8 {
    let (baseline_name, baseline_policy) = match load_baseline(baseline) {
        Ok(b) => b,
        Err(diags) => return report(diags, format, options),
    };
    let Loaded {
        analysis,
        policy,
        policy_path,
        values,
    } = match load(
        workflow_path,
        policy_path,
        Some(&baseline_policy),
        raw,
        options,
    ) {
        Ok(l) => l,
        Err(d) => return report(d, format, options),
    };
    let proposal = plan::build(
        &analysis,
        &policy,
        &policy_path.display().to_string(),
        &values,
    );
    let base = plan::build(&analysis, &baseline_policy, &baseline_name, &values);
    let (proposal, base) = match (proposal, base) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => {
            let mut diags = a.err().unwrap_or_default();
            diags.extend(b.err().unwrap_or_default());
            return report(diags, format, options);
        }
    };
    let diff = compare::compare(&proposal, &base);
    let fail_on: Vec<FailOn> = fail_on
        .iter()
        .map(|f| match f {
            FailOnArg::MoreCost => FailOn::MoreCost,
            FailOnArg::MoreCloud => FailOn::MoreCloud,
        })
        .collect();
    let violations = diff.violations(&fail_on);
    match format {
        OutputFormat::Text => {
            let mut text = render::plan_diff_text(&diff);
            if !violations.is_empty() {
                text.push('\n');
                for v in &violations {
                    text.push_str(&format!("refused: {}\n", render::violation_text(v)));
                }
            }
            print_out(&text);
        }
        OutputFormat::Json => {
            let mut v = serde_json::to_value(&diff).unwrap_or_default();
            if let Some(obj) = v.as_object_mut() {
                obj.insert(
                    "violations".to_owned(),
                    serde_json::to_value(&violations).unwrap_or_default(),
                );
            }
            print_out(&serde_json::to_string_pretty(&v).unwrap_or_default());
        }
    }
    if violations.is_empty() {
        exit::OK
    } else {
        exit::FAILED
    }
}

/// The baseline policy: a file, else `REV:PATH` read from git. Its name in
/// diagnostics is what the user wrote. Its models' retirement dates are
/// checked as the proposal's are: a plan on a retired model compares
/// nothing real.
fn load_baseline(spec: &str) -> Result<(String, crate::policy::Policy), Vec<Diagnostic>> {
    let path = Path::new(spec);
    if path.exists() || !git::is_revision_spec(spec) {
        let (file, p) = crate::policy::load(path)?;
        return with_lifecycle(&file.doc, p).map(|p| (spec.to_owned(), p));
    }
    let text = git::show(spec, Path::new(".")).map_err(|e| {
        vec![
            Diagnostic::error("compare-revision", e.to_string())
                .in_file(PathBuf::from(spec))
                .with_help("--compare takes a policy file or REV:PATH, e.g. main:policies/default.yaml (PATH from the repository's top, or ./PATH from here)"),
        ]
    })?;
    let (file, p) = crate::policy::load_text(spec, &text)?;
    with_lifecycle(&file.doc, p).map(|p| (spec.to_owned(), p))
}
