//! `tollgate check`: recognise each file, load and check it, then check
//! every workflow against every policy given with it.

use std::path::PathBuf;

use super::{OutputFormat, default_policy, load_policy, plural, print_out, report, with_lifecycle};
use crate::analyze::{self, Analysis};
use crate::catalog::Catalog;
use crate::diagnostic::{Diagnostic, RenderOptions};
use crate::inputs;
use crate::plan;
use crate::policy::{self, Policy};
use crate::schema::Format as FileFormat;
use crate::workflow::{self, InputType, Workflow};
use crate::yaml::Document;

/// A file `check` was given, once recognised and loaded.
enum Checked {
    Workflow(Box<Analysis>),
    Policy(PathBuf, Box<Policy>),
}

fn detect(doc: &Document) -> Option<FileFormat> {
    let obj = doc.root.as_object()?;
    if obj.contains_key("steps") {
        Some(FileFormat::Workflow)
    } else if crate::eval::policy_tests::is_policy_test(doc) {
        Some(FileFormat::PolicyTest)
    } else if obj.contains_key("cases") || obj.contains_key("cases_from") {
        Some(FileFormat::Suite)
    } else if obj.contains_key("rules")
        || obj.contains_key("models")
        || obj.contains_key("providers")
    {
        Some(FileFormat::Policy)
    } else {
        None
    }
}

pub(super) fn cmd_check(files: &[PathBuf], format: OutputFormat, options: RenderOptions) -> u8 {
    let mut diags = Vec::new();
    let mut checked = Vec::new();
    let mut summary = Vec::new();
    // A policy was given (even one that failed to load), or a file whose
    // kind is unknown (it may be the policy meant): then workflows are
    // never checked against the default policy instead — that would be a
    // verdict about a policy nobody asked for, and a note about it.
    let mut policy_given = false;
    for path in files {
        let doc = match workflow::load_document(path) {
            Ok(doc) => doc,
            Err(d) => {
                policy_given = true;
                diags.extend(d);
                continue;
            }
        };
        let kind = detect(&doc);
        policy_given |= matches!(
            kind,
            Some(FileFormat::Policy) | Some(FileFormat::Case) | None
        );
        match kind {
            Some(FileFormat::Workflow) => {
                match workflow::from_document::<Workflow>(doc, FileFormat::Workflow) {
                    Ok(w) => {
                        let root = analyze::project_root(path);
                        match analyze::analyze(w, &root) {
                            Ok(a) => {
                                diags.extend(a.warnings.iter().cloned());
                                summary.push(format!(
                                    "ok  {} (workflow {})",
                                    path.display(),
                                    a.workflow.value.name
                                ));
                                checked.push(Checked::Workflow(Box::new(a)));
                            }
                            Err(d) => diags.extend(d),
                        }
                    }
                    Err(d) => diags.extend(d),
                }
            }
            Some(FileFormat::Policy) => {
                match workflow::from_document::<policy::PolicyFile>(doc, FileFormat::Policy) {
                    Ok(loaded) => {
                        let (mut p, mut d) =
                            policy::compile(&loaded.value, &loaded.doc, Catalog::builtin());
                        if !d.iter().any(Diagnostic::is_error) {
                            d.extend(policy::load_routers(&mut p));
                        }
                        let bad = d.iter().any(Diagnostic::is_error);
                        // The compile's warnings are shown from `d`; only
                        // the retirement dates' are new.
                        diags.extend(d);
                        if !bad {
                            match with_lifecycle(&loaded.doc, p) {
                                Ok(p) => {
                                    diags.extend(
                                        p.warnings
                                            .iter()
                                            .filter(|w| {
                                                w.code == policy::lifecycle::RETIRING
                                            })
                                            .cloned(),
                                    );
                                    summary.push(format!(
                                        "ok  {} (policy {})",
                                        path.display(),
                                        p.name
                                    ));
                                    checked.push(Checked::Policy(path.clone(), Box::new(p)));
                                }
                                Err(e) => diags.extend(e),
                            }
                        }
                    }
                    Err(d) => diags.extend(d),
                }
            }
            Some(FileFormat::Suite) => match crate::eval::suite::from_document(path, doc) {
                Ok(s) => {
                    diags.extend(s.policy.warnings.iter().cloned());
                    diags.extend(s.analysis.warnings.iter().cloned());
                    let problems = suite_problems(&s);
                    if !problems.is_empty() {
                        diags.extend(problems);
                        continue;
                    }
                    summary.push(format!(
                        "ok  {} (suite {}, {})",
                        path.display(),
                        s.name,
                        plural(s.case_count, "case")
                    ));
                }
                Err(d) => diags.extend(d),
            },
            // Checked means loaded: every name against the policy. The
            // tests themselves run in `tollgate test`.
            Some(FileFormat::PolicyTest) => match crate::eval::policy_tests::from_document(path, doc) {
                Ok(t) => {
                    diags.extend(t.policy.warnings.iter().cloned());
                    summary.push(format!(
                        "ok  {} (policy tests of {}, {})",
                        path.display(),
                        t.policy.name,
                        plural(t.tests.len(), "test")
                    ));
                }
                Err(d) => diags.extend(d),
            },
            Some(FileFormat::Case) | None => diags.push(
                Diagnostic::error(
                    "unknown-file-kind",
                    "cannot tell whether this is a workflow, a policy, a suite or a policy test file",
                )
                .at(doc.span(""))
                .in_file(path)
                .with_help("a workflow has `steps:`; a policy has `models:` and `rules:`; a suite has `cases:`; a policy test file has `policy:` and `tests:`"),
            ),
        }
    }
    // Cross-check every workflow against every policy given with it; with
    // none, against the policy `plan` would use (the project's default, else
    // the built-in one), so `check` refuses what `plan` would.
    let default;
    let mut policies: Vec<(PathBuf, &Policy)> = checked
        .iter()
        .filter_map(|c| match c {
            Checked::Policy(path, p) => Some((path.clone(), p.as_ref())),
            Checked::Workflow(_) => None,
        })
        .collect();
    let any_workflow = checked.iter().any(|c| matches!(c, Checked::Workflow(_)));
    if !policy_given && any_workflow {
        let path = default_policy();
        match load_policy(&path) {
            Ok(p) => {
                diags.extend(p.warnings.iter().cloned());
                summary.push(format!(
                    "ok  {} (policy {}, the default: workflows were checked against it)",
                    path.display(),
                    p.name
                ));
                default = p;
                policies.push((path, &default));
            }
            Err(d) => diags.extend(d),
        }
    }
    for c in &checked {
        let Checked::Workflow(a) = c else { continue };
        for (path, p) in &policies {
            diags.extend(cross_check(a, p, path));
        }
    }
    // A policy given on its own and through a suite warns once.
    let mut seen = std::collections::HashSet::new();
    diags.retain(|d| d.is_error() || seen.insert((d.code, d.location(), d.message.clone())));
    let errors = diags.iter().any(Diagnostic::is_error);
    // The warnings first (stderr, unbuffered), then the verdict (stdout):
    // on one terminal or one `2>&1` log they read in that order.
    let code = report(diags, format, options);
    if format == OutputFormat::Text && !errors {
        summary.push(format!(
            "checked {}: no problems",
            plural(files.len(), "file")
        ));
        print_out(&summary.join("\n"));
    }
    code
}

/// What `plan` would refuse of workflow `a` under policy `p`, with the
/// values `plan` would use when no `--input` is given: defaults, then
/// examples. An input with neither gets a stand-in of its type; a stand-in
/// string, number or boolean has the right shape, so what fails with it
/// fails with any value (`for_each` over a string, an unroutable step). An
/// invented object or array has no real fields or items: a template that
/// fails on one may well render with real input, so while a workflow has
/// such an input, template failures are left to the template checks above
/// and only the routing problems are kept.
fn cross_check(a: &Analysis, p: &Policy, path: &std::path::Path) -> Vec<Diagnostic> {
    let unknown = analyze::check_tasks(a, &p.tasks);
    if !unknown.is_empty() {
        // `plan` stops here too.
        return unknown;
    }
    let values = inputs::placeholders(&a.workflow.value);
    let Err(diags) = plan::build(a, p, &path.display().to_string(), &values) else {
        return Vec::new();
    };
    let invented_structure = a.workflow.value.inputs.values().any(|decl| {
        decl.default.is_none()
            && decl.example.is_none()
            && matches!(decl.kind, InputType::Array | InputType::Object)
    });
    if !invented_structure {
        return diags;
    }
    diags
        .into_iter()
        .filter(|d| {
            !matches!(
                d.code,
                "undefined-variable" | "template-error" | "template-syntax" | "plan"
            )
        })
        .collect()
}

/// What `tollgate test` would refuse of a suite before its first call that
/// loading it does not (an unknown task is refused by `suite::load`): a
/// case that cannot be planned (worded as `test` words it).
fn suite_problems(s: &crate::eval::suite::Suite) -> Vec<Diagnostic> {
    let policy_name = s.policy_path.display().to_string();
    let mut diags = Vec::new();
    let visited = s.for_each_case(|case| {
        if let Err(d) = plan::build(&s.analysis, &s.policy, &policy_name, &case.inputs) {
            diags.push(
                Diagnostic::error(
                    "case-plan",
                    format!(
                        "case `{}` of suite `{}` cannot be planned",
                        case.name, s.name
                    ),
                )
                .with_help(format!(
                    "the case is at {}; the problems follow",
                    case.origin
                )),
            );
            diags.extend(d);
        }
    });
    if let Err(d) = visited {
        diags.extend(d);
    }
    diags
}
