//! Sensitivity propagation through the DAG.
//!
//! A step's effective sensitivity is the highest of: its own label (or the
//! policy's default), the labels of the inputs it reads, and the effective
//! sensitivity of the steps whose outputs it reads — transitively, since a
//! summary of confidential logs is confidential text. The origin is kept so
//! a plan can say *why* a step is confidential.

use std::fmt;

use serde::Serialize;

use crate::analyze::{Analysis, RenderContext};
use crate::diagnostic::{Diagnostic, did_you_mean, one_of};
use crate::policy::Policy;
use crate::yaml::pointer;

/// Where a step's level came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "name")]
pub enum Origin {
    /// The policy's default level (nothing raised it).
    Default,
    /// The step's own `sensitivity:` label.
    Label,
    Input(String),
    /// A document set a step retrieves from (its output may hold any of
    /// the set's chunks).
    Documents(String),
    /// Another step's output, which got it from somewhere else in turn.
    Step(String, Box<Origin>),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("policy default"),
            Origin::Label => f.write_str("step label"),
            Origin::Input(name) => write!(f, "inputs.{name}"),
            Origin::Documents(name) => write!(f, "documents.{name}"),
            Origin::Step(id, inner) => write!(f, "steps.{id} ← {inner}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Effective {
    /// Index into the policy's levels.
    pub level: usize,
    pub origin: Origin,
}

/// Checks every sensitivity label in the workflow against the policy's levels.
pub fn check_labels(analysis: &Analysis, policy: &Policy) -> Vec<Diagnostic> {
    let w = &analysis.workflow.value;
    let doc = analysis.doc();
    let mut diags = Vec::new();
    let mut check = |label: &str, ptr: String| {
        if policy.level_index(label).is_none() {
            diags.push(
                Diagnostic::error(
                    "unknown-level",
                    format!("unknown sensitivity level `{label}`"),
                )
                .at(doc.span(&ptr))
                .with_label(format!("not a level of policy `{}`", policy.name))
                .with_help(
                    did_you_mean(label, policy.levels.iter().map(String::as_str)).unwrap_or_else(
                        || {
                            format!(
                                "levels are {}",
                                one_of(policy.levels.iter().map(String::as_str))
                            )
                        },
                    ),
                ),
            );
        }
    };
    for (name, decl) in &w.inputs {
        if let Some(l) = &decl.sensitivity {
            check(l, pointer(["inputs", name.as_str(), "sensitivity"]));
        }
    }
    for (id, step) in &w.steps {
        if let Some(l) = &step.sensitivity {
            check(l, pointer(["steps", id.as_str(), "sensitivity"]));
        }
    }
    for (name, set) in &w.documents {
        if let Some(l) = &set.sensitivity {
            check(l, pointer(["documents", name.as_str(), "sensitivity"]));
        }
    }
    diags
}

/// The level of every document of set `name`: its own label, and for a set
/// over an input, the input's label too (the higher); unknown labels count
/// as the top level (fail closed).
pub fn documents_level(analysis: &Analysis, policy: &Policy, name: &str) -> usize {
    let w = &analysis.workflow.value;
    let top = policy.levels.len().saturating_sub(1);
    let level_of = |l: Option<&str>| {
        l.map_or(policy.default_level, |l| {
            policy.level_index(l).unwrap_or(top)
        })
    };
    let Some(set) = w.documents.get(name) else {
        return top;
    };
    let own = level_of(set.sensitivity.as_deref());
    let input = set
        .input
        .as_ref()
        .and_then(|i| w.inputs.get(i))
        .map_or(0, |d| level_of(d.sensitivity.as_deref()));
    own.max(input)
}

/// The highest level of the sets step `id` retrieves from, and the first
/// set at it: what its output may hold, whatever the run retrieves.
fn retrieval_level(analysis: &Analysis, policy: &Policy, id: &str) -> Option<(usize, String)> {
    let r = analysis.workflow.value.steps[id].retrieve.as_ref()?;
    r.from
        .iter()
        .map(|set| (documents_level(analysis, policy, set), set.clone()))
        .fold(None, |best: Option<(usize, String)>, (l, s)| match best {
            Some((b, _)) if b >= l => best,
            _ => Some((l, s)),
        })
}

/// Effective sensitivity of every step, in the analysis's step order.
/// Labels must have been checked with [`check_labels`]; unknown ones count as
/// the most sensitive level (fail closed).
pub fn propagate(analysis: &Analysis, policy: &Policy) -> Vec<Effective> {
    let w = &analysis.workflow.value;
    let top = policy.levels.len().saturating_sub(1);
    let level_of = |l: &str| policy.level_index(l).unwrap_or(top);
    let mut out: Vec<Option<Effective>> = vec![None; analysis.steps.len()];
    for &i in analysis.dag.order() {
        let (id, info) = analysis
            .steps
            .get_index(i)
            .expect("dag indices are step indices");
        let step = &w.steps[id];
        let mut best = match &step.sensitivity {
            Some(l) => Effective {
                level: level_of(l),
                origin: Origin::Label,
            },
            None => Effective {
                level: policy.default_level,
                origin: Origin::Default,
            },
        };
        for name in &info.reads_inputs {
            let level = w.inputs[name]
                .sensitivity
                .as_deref()
                .map_or(policy.default_level, level_of);
            if level > best.level {
                best = Effective {
                    level,
                    origin: Origin::Input(name.clone()),
                };
            }
        }
        for dep in &info.reads_steps {
            let j = analysis.steps.get_index_of(dep).expect("deps are steps");
            let upstream = out[j]
                .as_ref()
                .expect("topological order: dependencies come first");
            if upstream.level > best.level {
                best = Effective {
                    level: upstream.level,
                    origin: Origin::Step(dep.clone(), Box::new(upstream.origin.clone())),
                };
            }
            // A retrieving step's own level is what it received (decided
            // per expansion, `step`); its output may hold any chunk of its
            // sets, so a reader of it counts them all.
            if let Some((level, set)) = retrieval_level(analysis, policy, dep) {
                if level > best.level {
                    best = Effective {
                        level,
                        origin: Origin::Step(dep.clone(), Box::new(Origin::Documents(set))),
                    };
                }
            }
        }
        out[i] = Some(best);
    }
    out.into_iter()
        .map(|e| e.expect("every step visited"))
        .collect()
}

/// The level of a render context as it was built (by
/// [`crate::analyze::StepInfo::context`]): the step's own level, every input
/// it holds and every step output it holds (at that step's effective level,
/// `levels` by step index). Computed from the context itself, not from the
/// analysis, so the label a request carries to the provider boundary
/// reflects what was rendered even if the two ever disagree.
///
/// It reads the names the context holds, never their values, and a step
/// computes it once for all its calls: a `for_each` item is an element of
/// a list the same context gave, so it adds no data of its own.
pub fn of_context(
    ctx: &RenderContext,
    own: usize,
    analysis: &Analysis,
    policy: &Policy,
    levels: &[usize],
) -> usize {
    let w = &analysis.workflow.value;
    let top = policy.levels.len().saturating_sub(1);
    let level_of = |l: &str| policy.level_index(l).unwrap_or(top);
    let mut level = own;
    for name in ctx.input_names() {
        // Not a declared input: the context is not what it should be.
        let l = w.inputs.get(&name).map_or(top, |d| {
            d.sensitivity
                .as_deref()
                .map_or(policy.default_level, level_of)
        });
        level = level.max(l);
    }
    for id in ctx.step_ids() {
        let l = analysis
            .steps
            .get_index_of(&id)
            .and_then(|i| levels.get(i).copied())
            .unwrap_or(top);
        level = level.max(l);
    }
    level
}

/// The values that must never be in a cloud request: every string (at least
/// [`crate::route::MIN_WITHHELD_CHARS`] long) inside an input above
/// `cloud_max`.
pub fn withheld(
    analysis: &Analysis,
    policy: &Policy,
    inputs: &serde_json::Map<String, serde_json::Value>,
) -> Vec<String> {
    fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) => {
                let s = s.trim();
                if s.chars().count() >= crate::route::MIN_WITHHELD_CHARS {
                    out.push(s.to_owned());
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
            serde_json::Value::Object(o) => o.values().for_each(|x| strings(x, out)),
            _ => {}
        }
    }
    let w = &analysis.workflow.value;
    let top = policy.levels.len().saturating_sub(1);
    let mut out = Vec::new();
    for (name, decl) in &w.inputs {
        let level = decl
            .sensitivity
            .as_deref()
            .map_or(policy.default_level, |l| {
                policy.level_index(l).unwrap_or(top)
            });
        if level > policy.cloud_max {
            if let Some(v) = inputs.get(name) {
                strings(v, &mut out);
            }
        }
    }
    out
}
