//! What the integration tests share. `cli` is the only place the binary is
//! spawned; the others choose where it runs and what it runs against.

/// The `Test` builder, its environment policy, and `Run`, the one output type.
pub mod cli;
/// The sshd fleet and the inventories that reach it (the one `host_entry`).
pub mod fleet;
/// Operator directories: `Lab`, `opsrun(dir, …)`, `Sandbox`, and readers of what runs left.
pub mod lab;
/// A pseudo-terminal for gates and the live view.
pub mod pty;
/// The Dameng, ApusicAS, nginx and LVM simulators and their event log.
pub mod sim;
/// Hosts with a simulated app that log every call: `Site`; stopping opsrun mid-step.
pub mod site;
