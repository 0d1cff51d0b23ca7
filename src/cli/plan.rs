//! `tollgate plan`: the dry run.

use std::path::{Path, PathBuf};

use super::journal::{self, StateArg};
use super::{OutputFormat, default_policy, exit, load_both, print_out, report, warn};
use crate::diagnostic::RenderOptions;
use crate::inputs::{self, RawInput};
use crate::{plan, render};

pub(super) fn cmd_plan(
    workflow_path: &Path,
    policy_path: Option<PathBuf>,
    raw: &[RawInput],
    format: OutputFormat,
    state: &StateArg,
    options: RenderOptions,
) -> u8 {
    let policy_path = policy_path.unwrap_or_else(default_policy);
    let (analysis, policy) = match load_both(workflow_path, &policy_path) {
        Ok(both) => both,
        Err(diags) => return report(diags, format, options),
    };
    // Plain http to a cloud provider included: warned about here, refused
    // by `run`.
    warn(policy.warnings.iter().chain(&analysis.warnings), options);
    let values = match inputs::resolve(&analysis.workflow.value, raw, true) {
        Ok(v) => v,
        Err(d) => return report(d, format, options),
    };
    match plan::build(
        &analysis,
        &policy,
        &policy_path.display().to_string(),
        &values,
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
