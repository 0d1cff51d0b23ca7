//! What-if: the same workflow planned under two policies, step by step.
//!
//! `tollgate plan WORKFLOW --policy A --compare B` builds both plans with
//! the same inputs (two ordinary [`super::build`] calls: nothing here
//! routes or prices anything itself) and pairs their steps by id. B is the
//! baseline — typically the policy on `main` — and A the proposal, so every
//! delta reads "A minus B": what merging the change would cost.
//!
//! A CI job guards policy changes with `--fail-on more-cost` (A's expected
//! total is above B's) and `--fail-on more-cloud` (a step that stayed on the
//! machine under B would leave it under A, or A makes more cloud calls).

use serde::Serialize;

use super::{CostRange, NamedPath, Plan, StepPlan};
use crate::policy::{Locality, Tier};

/// Below this, two costs are the same (float noise of summed prices).
const COST_EPSILON: f64 = 1e-9;

/// Two plans of one workflow, step by step.
#[derive(Debug, Clone, Serialize)]
pub struct PlanDiff {
    pub workflow: NamedPath,
    /// The proposal (`--policy`).
    pub policy: NamedPath,
    /// The baseline (`--compare`).
    pub baseline: NamedPath,
    pub steps: Vec<StepDiff>,
    pub totals: TotalsDiff,
}

/// One step under both policies.
#[derive(Debug, Clone, Serialize)]
pub struct StepDiff {
    pub id: String,
    pub calls: u64,
    /// Its route under the proposal; `None` when no model fits.
    pub route: Option<RouteBrief>,
    /// Its route under the baseline.
    pub baseline_route: Option<RouteBrief>,
    pub cost: CostRange,
    pub baseline_cost: CostRange,
    /// Expected (low) cost, proposal minus baseline.
    pub delta: f64,
    /// Another model serves it (by provider and model name, not alias),
    /// or it gains or loses its route.
    pub changed: bool,
    /// Local under the baseline, cloud under the proposal.
    pub leaves_machine: bool,
}

/// A route in a few words.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteBrief {
    /// The policy's alias for the model.
    pub model: String,
    /// The provider's name for it: two policies may give one alias to
    /// different models, so this is what "changed" compares.
    pub provider_model: String,
    pub provider: String,
    pub tier: Tier,
    pub locality: Locality,
    /// `rule NAME` or the step's pin.
    pub decided_by: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TotalsDiff {
    pub cost: CostRange,
    pub baseline_cost: CostRange,
    /// Expected (low) total, proposal minus baseline.
    pub delta: f64,
    /// `delta` relative to the baseline's expected total; `None` when the
    /// baseline costs nothing.
    pub delta_percent: Option<f64>,
    pub cloud_calls: u64,
    pub baseline_cloud_calls: u64,
    pub changed_steps: u64,
}

/// What a CI job may refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOn {
    /// The proposal's expected total is above the baseline's.
    MoreCost,
    /// A step leaves the machine, or the proposal makes more cloud calls.
    MoreCloud,
}

fn brief(s: &StepPlan) -> Option<RouteBrief> {
    let m = s.model.as_ref()?;
    Some(RouteBrief {
        model: m.alias.clone(),
        provider_model: m.model.clone(),
        provider: m.provider.clone(),
        tier: m.tier,
        locality: m.locality,
        decided_by: s
            .route
            .decider
            .as_ref()
            .map_or_else(|| "no rule".to_owned(), |d| d.label()),
    })
}

fn same_model(a: Option<&RouteBrief>, b: Option<&RouteBrief>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => {
            a.provider_model == b.provider_model && a.locality == b.locality && a.tier == b.tier
        }
        (None, None) => true,
        _ => false,
    }
}

fn cloud_calls(plan: &Plan) -> u64 {
    plan.steps
        .iter()
        .filter(|s| {
            s.model
                .as_ref()
                .is_some_and(|m| m.locality == Locality::Cloud)
        })
        .map(|s| s.calls)
        .sum()
}

/// Pairs the steps of two plans of the same workflow (same steps, same
/// order: the workflow and inputs are the same, only the policy differs).
pub fn compare(proposal: &Plan, baseline: &Plan) -> PlanDiff {
    let steps: Vec<StepDiff> = proposal
        .steps
        .iter()
        .map(|a| {
            let b = baseline.steps.iter().find(|b| b.id == a.id);
            let route = brief(a);
            let baseline_route = b.and_then(brief);
            let baseline_cost = b.map(|b| b.cost).unwrap_or_default();
            let leaves_machine = matches!(
                (&baseline_route, &route),
                (Some(old), Some(new)) if old.locality == Locality::Local && new.locality == Locality::Cloud
            );
            StepDiff {
                id: a.id.clone(),
                calls: a.calls,
                changed: !same_model(route.as_ref(), baseline_route.as_ref()),
                route,
                baseline_route,
                cost: a.cost,
                baseline_cost,
                delta: a.cost.low - baseline_cost.low,
                leaves_machine,
            }
        })
        .collect();
    let cost = proposal.totals.cost;
    let baseline_cost = baseline.totals.cost;
    let delta = cost.low - baseline_cost.low;
    PlanDiff {
        workflow: proposal.workflow.clone(),
        policy: proposal.policy.clone(),
        baseline: baseline.policy.clone(),
        totals: TotalsDiff {
            cost,
            baseline_cost,
            delta,
            delta_percent: (baseline_cost.low > COST_EPSILON)
                .then(|| delta / baseline_cost.low * 100.0),
            cloud_calls: cloud_calls(proposal),
            baseline_cloud_calls: cloud_calls(baseline),
            changed_steps: steps.iter().filter(|s| s.changed).count() as u64,
        },
        steps,
    }
}

/// Why a CI job refuses a change.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Violation {
    /// `more-cost`: the expected total rises.
    MoreCost { baseline: f64, proposal: f64 },
    /// `more-cloud`: a step that stayed local would leave the machine.
    LeavesMachine { step: String },
    /// `more-cloud`: more calls go to the cloud.
    MoreCloudCalls { baseline: u64, proposal: u64 },
}

impl PlanDiff {
    /// Why a CI job guarding with `fail_on` refuses this change (empty: it
    /// passes).
    pub fn violations(&self, fail_on: &[FailOn]) -> Vec<Violation> {
        let mut out = Vec::new();
        if fail_on.contains(&FailOn::MoreCost) && self.totals.delta > COST_EPSILON {
            out.push(Violation::MoreCost {
                baseline: self.totals.baseline_cost.low,
                proposal: self.totals.cost.low,
            });
        }
        if fail_on.contains(&FailOn::MoreCloud) {
            out.extend(
                self.steps
                    .iter()
                    .filter(|s| s.leaves_machine)
                    .map(|s| Violation::LeavesMachine { step: s.id.clone() }),
            );
            if self.totals.cloud_calls > self.totals.baseline_cloud_calls {
                out.push(Violation::MoreCloudCalls {
                    baseline: self.totals.baseline_cloud_calls,
                    proposal: self.totals.cloud_calls,
                });
            }
        }
        out
    }
}
