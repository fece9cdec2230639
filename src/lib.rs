//! opsrun: load → plan → execute → journal → report → sign.
pub mod transport;
