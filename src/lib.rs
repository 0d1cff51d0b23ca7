//! # tollgate
//!
//! A declarative workflow engine for LLM work. Teams write YAML *workflows*
//! of steps whose prompts are Jinja templates; a YAML *policy* routes each
//! step to a model — local or cloud — by data sensitivity, context size,
//! task and reasoning depth, latency and tier budget. A dry run (`plan`)
//! shows every route and its cost before anything is spent.
//!
//! The pipeline, one module per stage:
//!
//! 1. **load** — [`yaml`] (YAML with a span for every node), [`schema`]
//!    (JSON Schema), [`workflow`] / [`policy`] (typed files), every read
//!    through [`files`];
//! 2. **validate** — [`analyze`] (templates, references, the DAG in
//!    [`graph`]), [`policy::compile`] (names, prices, rule reachability);
//! 3. **plan** — [`inputs`], [`sensitivity`], [`step`] (a step's meaning,
//!    shared with `run`), [`route`], [`plan`], priced by [`cost`] from the
//!    [`catalog`] with token counts from [`tokens`];
//! 4. **execute** — [`run`] over the HTTP clients of [`provider`], with the
//!    run journal ([`journal`]) for resume, the response cache and budgets
//!    over time; [`eval`] runs suites of cases through the same executor;
//! 5. **report** — [`render`], [`progress`] and the [`cli`].
//!
//! Below them all, vocabulary shared across layers: [`usage`] (token counts
//! and cache lifetimes, which the providers report and `cost` prices),
//! [`process`] (is a process still alive), [`diagnostic`]. No module imports
//! one that imports it back (`tests/integration/architecture.rs` checks).
//!
//! Everything before the provider layer is synchronous and does no network
//! I/O; every problem found is a [`diagnostic::Diagnostic`] with a location.
//!
//! ```
//! use tollgate::{diagnostic::SourceFile, yaml::Document};
//! let doc = Document::parse(SourceFile::new("w.yaml", "steps: {a: {task: t}}\n")).unwrap();
//! assert_eq!(doc.span("/steps/a/task").unwrap().location(), "w.yaml:1:19");
//! ```

pub mod analyze;
pub mod attachment;
pub mod catalog;
pub mod cli;
pub mod context;
pub mod cost;
pub mod diagnostic;
pub mod eval;
pub mod files;
pub mod git;
pub mod graph;
pub mod html;
pub mod inputs;
pub mod journal;
pub mod judge;
pub mod outcome;
pub mod plan;
pub mod policy;
pub mod process;
pub mod progress;
pub mod provider;
pub mod reasoning;
pub mod render;
pub mod route;
pub mod router;
pub mod run;
pub mod schema;
pub mod sensitivity;
pub mod spill;
pub mod step;
pub mod streamed;
pub mod template;
pub mod tokens;
pub mod usage;
pub mod workflow;
pub mod yaml;
