//! Report: the documents a person reads.
//!
//! Receives a [`crate::plan::Plan`] (for the dry-run text, JSON and Markdown
//! plan document) or a run's journal (for the Markdown execution log), and
//! produces text; signing that text is the `sign` stage's job.

mod excerpt;
pub mod log;
pub mod markdown;
pub mod plan_document;
pub mod preview;
mod sections;
pub mod signature;
