//! opsrun: load → plan → execute → record → report → sign.
//!
//! Each stage is a folder and may use only the stages declared after it below
//! (and the leaf libraries); the leaves use no stage. `src/architecture.rs`
//! checks this on every `cargo test`.

// Stages, from the edge inwards.
pub mod cli;
pub(crate) mod execute;
pub mod load;
pub mod plan;
pub(crate) mod record;
pub(crate) mod report;
pub mod sign;

// Leaf libraries: they import no stage.
pub(crate) mod clock;
pub mod diagnostic;
pub(crate) mod digest;
pub(crate) mod duration;
pub(crate) mod error;
pub(crate) mod plural;
pub(crate) mod sanitize;
pub(crate) mod shell;
pub(crate) mod template;
pub mod transport;
pub(crate) mod yaml;

#[cfg(test)]
mod architecture;

// The API used by the integration tests and benches, under the paths they
// were written against before the stages became folders.
pub use load::{inventory, lint, runbook};
pub use report::preview;
