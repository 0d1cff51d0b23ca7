//! One integration test binary (faster to link than many): each module is
//! one area of behaviour a user relies on; `support` is what they share.

mod support;

mod architecture;
mod batch;
mod bounds;
mod cascade;
mod cli;
mod compare;
mod context;
mod cost;
mod data_driven;
mod fan_out;
mod fewer_surprises;
mod first_hour;
mod fuzz;
mod hostile;
mod html;
mod journal;
mod leaks;
mod ledger;
mod ledger_tls;
mod local_model;
mod money;
mod multimodal;
mod ollama;
mod pools;
mod providers;
mod reasoning;
mod retrieval;
mod router;
mod routes;
mod run;
mod sensitivity_gate;
mod step_semantics;
mod streamed;
mod suites;
mod team;
mod terminal;
mod warnings;
