//! `tollgate test`: evaluation suites for CI.
//!
//! A suite names a workflow, a policy and cases (inputs plus expectations
//! per step). The stages mirror the rest of tollgate:
//!
//! - [`suite`] — load and check the suite, its workflow, policy and case
//!   files; every problem located, before anything runs;
//! - [`runner`] — select cases (`--filter`, `--shard K/N`), plan each, run
//!   them concurrently through [`crate::run`], check expectations;
//! - [`assertion`] — what an expectation checks (equals, contains, regex,
//!   JSON Schema, tokens, cost, latency; `snapshot` and `judge` are parsed
//!   here and carried out by the runner);
//! - [`snapshot`] — the reviewed snapshot files and pending changes;
//! - [`cassette`] — recorded responses: record live, replay offline;
//! - [`results`] — outcomes, the human summary, JUnit XML, merging shards;
//! - [`spill`] — a suite's case records, spilled to a temporary file as
//!   they finish and read back in suite order by the reports;
//! - [`compare`] — `tollgate compare`: the same suites under several
//!   policies or model pins, per suite and per task, with the Pareto front.
//!
//! Nothing here prints or touches the terminal: the runner reports each
//! finished case run through [`runner::TestOptions::on_run`], and
//! [`results`] renders text the CLI prints.
//!
//! Invariants: a suite with any input problem runs nothing (exit 2);
//! `--replay` makes no network connection and starts no local server;
//! `--ci` writes no file but the results the user asked for; an
//! infrastructure error makes a case `errored`, never `failed`.

pub mod assertion;
pub mod cassette;
pub mod compare;
pub mod policy_tests;
pub mod results;
pub mod runner;
pub mod snapshot;
pub mod spill;
pub mod suite;
