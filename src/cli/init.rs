//! `tollgate init`: a starter project in a folder — a workflow, a policy, a
//! suite with one case, the JSON Schemas the files point their editors at,
//! and `.tollgate/` in `.gitignore` — laid out as tollgate's own repository
//! is (`workflows/`, `policies/`, `evals/`, `schemas/`), so the policy is
//! the project's default and every relative `$schema` path resolves.
//!
//! It never overwrites: every file is checked before the first is written,
//! and each is created with `create_new`, so a file that appears meanwhile
//! is not clobbered either.

use std::io::Write;
use std::path::Path;

use clap::ValueEnum;

use super::{exit, print_out, report};
use crate::diagnostic::{Diagnostic, RenderOptions};
use crate::schema::Format;

/// Which policy the starter project gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum Template {
    /// Every step on the local Gemma model through llama.cpp: free, offline, no key.
    Local,
    /// The team default: sensitive data local, volume work on a budget model, hard problems on the flagship.
    Team,
    /// For CI suites: budget models, a hard spending cap, recorded answers replayed.
    Ci,
}

impl Template {
    fn policy(self) -> &'static str {
        match self {
            Template::Local => include_str!("../../policies/local.yaml"),
            Template::Team => include_str!("../../policies/default.yaml"),
            Template::Ci => include_str!("../../policies/ci.yaml"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Template::Local => "local",
            Template::Team => "team",
            Template::Ci => "ci",
        }
    }

    fn policy_summary(self) -> &'static str {
        match self {
            Template::Local => "every step on the local Gemma 3 270M model (llama.cpp)",
            Template::Team => {
                "sensitive data local, volume work on a budget model, hard problems on the flagship"
            }
            Template::Ci => "budget models, a 25-cent cap per run, sensitive data local",
        }
    }

    /// The next three commands, each with what it needs: they must be true
    /// of the files just written.
    fn next(self) -> [(&'static str, &'static str); 3] {
        const PLAN: (&str, &str) = (
            "tollgate plan workflows/summarize.yaml",
            "the dry run: model, rule, tokens and cost of each step; calls nothing",
        );
        match self {
            Template::Local => [
                PLAN,
                (
                    "tollgate run workflows/summarize.yaml -i text=\"Paste a paragraph here.\"",
                    "starts llama-server with the model; install both once with scripts/setup-local.sh from tollgate's repository",
                ),
                (
                    "tollgate test evals/summarize.yaml --record",
                    "runs the suite's case on the local model and records the answer; `--replay` then runs it offline",
                ),
            ],
            Template::Team => [
                PLAN,
                (
                    "tollgate run workflows/summarize.yaml -i text=\"Paste a paragraph here.\"",
                    "the summary goes to the budget model: needs OPENAI_API_KEY",
                ),
                (
                    "tollgate test evals/summarize.yaml --record",
                    "runs the suite's case (OPENAI_API_KEY) and records the answer; `--replay` then runs it offline",
                ),
            ],
            Template::Ci => [
                PLAN,
                (
                    "tollgate test evals/summarize.yaml --record",
                    "runs the suite's case once on the budget model (needs OPENAI_API_KEY); commit evals/cassettes/",
                ),
                (
                    "tollgate test evals/summarize.yaml --replay --ci",
                    "what CI runs: the recorded answers, offline, free; a changed output fails",
                ),
            ],
        }
    }
}

const WORKFLOW: &str = r#"# yaml-language-server: $schema=../schemas/workflow.schema.json
#
# A starter workflow: one step that summarizes a text. `tollgate plan` shows
# which model the policy picks for each step and what it would cost;
# `tollgate run` runs it. Add steps that read `steps.summary.output`.
version: 1
name: summarize
description: Summarize a text in three sentences.

inputs:
  text:
    type: string
    description: The text to summarize.
    # What `tollgate plan` uses when no `-i text=…` is given.
    example: "tollgate turns a YAML workflow and a routing policy into a plan: for every step, the model, the rule that chose it, the tokens and the cost. Then it runs it."

steps:
  summary:
    task: summarize
    max_output_tokens: 200
    prompt: |
      Summarize the following text in three sentences.

      {{ inputs.text }}
"#;

const SUITE: &str = r#"# yaml-language-server: $schema=../schemas/suite.schema.json
#
# One case for the starter workflow. `tollgate test evals/summarize.yaml
# --record` runs it on the policy's model and records the answer in
# evals/cassettes/; `--replay` answers from the recording: offline, free.
workflow: ../workflows/summarize.yaml
policy: ../policies/default.yaml
cases:
  - name: release-note
    inputs:
      text: "Version 2.0 adds offline mode, cuts start-up time by half and drops support for the old sync protocol. Users of the old protocol must upgrade their servers before updating the app."
    expect:
      # Any non-empty answer: tighten it (`contains`, `snapshot: true`)
      # once you have seen what the model says.
      summary: { json_schema: { type: string, minLength: 1 } }
"#;

/// The policy's promises as tests, true of every template's policy.
const POLICY_TESTS: &str = r#"# yaml-language-server: $schema=../../schemas/policy-test.schema.json
#
# What the policy promises, as tests: `tollgate test policies/tests` routes
# each step description with the policy and checks the route it gets; no
# model is called and nothing is spent. Add a test for every promise you
# rely on ("architecture goes to the flagship", "a 300k-token prompt goes to
# a model with a window for it"), so a policy change that breaks one fails.
policy: ../default.yaml
tests:
  - name: confidential data never leaves the machine
    step: { task: summarize, sensitivity: confidential }
    expect: { locality: local }
"#;

/// The line `.gitignore` needs: the run journal's folder.
const IGNORE: &str = ".tollgate/";

/// Where each starter file goes, relative to the project folder.
fn files(template: Template) -> Vec<(&'static str, &'static str)> {
    vec![
        ("workflows/summarize.yaml", WORKFLOW),
        ("policies/default.yaml", template.policy()),
        ("evals/summarize.yaml", SUITE),
        ("policies/tests/default.yaml", POLICY_TESTS),
        (
            "schemas/workflow.schema.json",
            Format::Workflow.schema_text(),
        ),
        ("schemas/policy.schema.json", Format::Policy.schema_text()),
        ("schemas/suite.schema.json", Format::Suite.schema_text()),
        (
            "schemas/policy-test.schema.json",
            Format::PolicyTest.schema_text(),
        ),
    ]
}

pub(super) fn cmd_init(template: Template, dir: &Path, options: RenderOptions) -> u8 {
    let files = files(template);
    // Everything is checked before anything is written.
    let existing: Vec<&str> = files
        .iter()
        .map(|(rel, _)| *rel)
        .filter(|rel| dir.join(rel).symlink_metadata().is_ok())
        .collect();
    if !existing.is_empty() {
        return refuse(
            Diagnostic::error(
                "init-exists",
                format!(
                    "{} already has {}: nothing was written",
                    dir.display(),
                    existing.join(", ")
                ),
            )
            .with_help("tollgate init never overwrites a file: move them away, or init another folder (`tollgate init DIR`)"),
            options,
        );
    }
    let gitignore = dir.join(".gitignore");
    let ignore_text = match gitignore.symlink_metadata() {
        Err(_) => None,
        Ok(meta) if meta.is_file() => match crate::files::read_text(&gitignore) {
            Ok(text) => Some(text),
            Err(err) => {
                return refuse(
                    Diagnostic::error(
                        "init-gitignore",
                        format!("cannot read {}: {err}", gitignore.display()),
                    ),
                    options,
                );
            }
        },
        Ok(_) => {
            return refuse(
                Diagnostic::error(
                    "init-gitignore",
                    format!(
                        "{} is not a regular file: nothing was written",
                        gitignore.display()
                    ),
                ),
                options,
            );
        }
    };
    let mut written = Vec::new();
    for (rel, text) in &files {
        if let Err(err) = create(&dir.join(rel), text) {
            return refuse(
                Diagnostic::error(
                    "init-write",
                    format!("cannot write {}: {err}", dir.join(rel).display()),
                )
                .with_help(format!(
                    "written before the failure: {}",
                    written.join(", ")
                )),
                options,
            );
        }
        written.push(*rel);
    }
    let ignore_note = match append_ignore(&gitignore, ignore_text.as_deref()) {
        Ok(true) => format!("  .gitignore                     + {IGNORE} (the run journal)"),
        Ok(false) => format!("  .gitignore                     already ignores {IGNORE}"),
        Err(err) => {
            return refuse(
                Diagnostic::error(
                    "init-write",
                    format!("cannot write {}: {err}", gitignore.display()),
                ),
                options,
            );
        }
    };
    print_out(&summary(template, dir, &ignore_note));
    exit::OK
}

fn refuse(d: Diagnostic, options: RenderOptions) -> u8 {
    report(vec![d], super::OutputFormat::Text, options)
}

/// Creates a file that must not exist yet (and its folders).
fn create(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.flush()
}

/// Appends `.tollgate/` to `.gitignore` unless a line already ignores it;
/// true when it was added.
fn append_ignore(path: &Path, existing: Option<&str>) -> std::io::Result<bool> {
    let Some(text) = existing else {
        create(path, &format!("{IGNORE}\n"))?;
        return Ok(true);
    };
    let covered = text
        .lines()
        .map(str::trim)
        .any(|l| matches!(l, ".tollgate" | ".tollgate/" | "/.tollgate" | "/.tollgate/"));
    if covered {
        return Ok(false);
    }
    let sep = if text.is_empty() || text.ends_with('\n') {
        ""
    } else {
        "\n"
    };
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    f.write_all(format!("{sep}{IGNORE}\n").as_bytes())?;
    f.flush()?;
    Ok(true)
}

fn summary(template: Template, dir: &Path, ignore_note: &str) -> String {
    let mut out = format!(
        "Wrote a starter project (template {}) in {}:\n\
         \x20 workflows/summarize.yaml       a workflow: one summarize step\n\
         \x20 policies/default.yaml          the policy: {}\n\
         \x20 evals/summarize.yaml           a test suite with one case\n\
         \x20 policies/tests/default.yaml    the policy's promises as tests, run by `tollgate test policies/tests`\n\
         \x20 schemas/*.schema.json          the JSON Schemas the files' `$schema` comments point at\n\
         {ignore_note}\n\n",
        template.name(),
        dir.display(),
        template.policy_summary(),
    );
    if dir == Path::new(".") {
        out.push_str("Next:\n");
    } else {
        out.push_str(&format!("Next, in {}:\n", dir.display()));
    }
    for (i, (cmd, why)) in template.next().iter().enumerate() {
        out.push_str(&format!("  {}. {cmd}\n     {why}\n", i + 1));
    }
    out
}
