//! Record: what a run did, as it happens.
//!
//! Receives the engine's [`events::Event`]s and appends them to the run
//! directory's journal (`journal.jsonl`, with full outputs under `outputs/`);
//! reads journals back to list runs (`opsrun runs`) and to pick up a run
//! again (`--resume`, `rollback`).

pub mod binding;
pub mod chain;
pub mod events;
pub mod journal;
pub(crate) mod legacy;
pub mod output;
pub mod recover;
pub mod reserve;
pub mod rundir;
pub mod runs;
pub mod view;
