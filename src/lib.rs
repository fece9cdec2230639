//! opsrun: load → plan → execute → journal → report → sign.
pub mod app;
pub mod cli;
pub mod diagnostic;
pub mod duration;
pub mod error;
pub mod inventory;
pub mod lint;
pub mod load;
pub mod pattern;
pub mod plan;
pub mod preview;
pub mod runbook;
pub mod shell;
pub mod template;
pub mod transport;
pub mod yaml;
