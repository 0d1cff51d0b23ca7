//! Context management (issue 14): bringing a step's large inputs under a
//! token budget before they are sent.
//!
//! - [`retrieval`]: the top-k chunks of named document sets most relevant
//!   to a query, ranked with BM25, each carrying its document's label;
//! - [`history`]: chat-message inputs sent as real messages, the last turns
//!   kept and the older ones summarized by a generated step.

pub mod history;
pub mod retrieval;
